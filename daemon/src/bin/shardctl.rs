fn main() -> std::process::ExitCode {
    shardd::ctl::main()
}
