fn main() -> std::process::ExitCode {
    shardd::cli::main()
}
