//! The Python package's pytest suite (python/tests), run as part of
//! `cargo test` against the shardd binary just built: the extension is
//! built with cargo (cargo test has released its build lock by the time
//! tests run), laid out as the `shardd` package next to its Python
//! sources, and pytest runs with it.
//!
//! The interpreter is `$SHARDD_PYTHON`, else `python3`; it needs pytest and
//! numpy (`.ci/run` makes a virtual environment with them, torch and the
//! rest). Without them the suite is skipped, saying why.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn python() -> String {
    std::env::var("SHARDD_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Why the interpreter cannot run the suite, if it cannot.
fn missing(python: &str) -> Option<String> {
    let probe = Command::new(python).args(["-c", "import pytest, numpy"]).output();
    match probe {
        Err(e) => Some(format!("{python} cannot be run ({e})")),
        Ok(out) if !out.status.success() => Some(format!(
            "{python} lacks pytest or numpy ({}); `pip install pytest numpy ml_dtypes safetensors torch`, \
             or point SHARDD_PYTHON at an interpreter that has them",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("import failed")
        )),
        Ok(_) => None,
    }
}

/// Builds the extension; returns the shared library.
fn build_extension() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo().join("target"), PathBuf::from);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "-p", "shardd-python", "--target-dir"])
        .arg(&target)
        .current_dir(repo())
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the Python extension failed");
    target.join("debug").join("libshardd_native.so")
}

#[test]
fn the_python_suite_passes() {
    let python = python();
    if let Some(reason) = missing(&python) {
        support::skipped(format!("the Python suite: {reason}"));
        return;
    }
    let library = build_extension();
    // The package as maturin lays it out: the Python sources and the
    // extension side by side.
    let dir = tempfile::tempdir().unwrap();
    let package = dir.path().join("shardd");
    std::fs::create_dir(&package).unwrap();
    for entry in std::fs::read_dir(repo().join("python/shardd")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "py" || e == "pyi") {
            std::fs::copy(&path, package.join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::copy(&library, package.join("_native.abi3.so")).unwrap();
    let status = Command::new(&python)
        .args(["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"])
        .arg(repo().join("python/tests"))
        .env("PYTHONPATH", dir.path())
        .env("SHARDD_BIN", env!("CARGO_BIN_EXE_shardd"))
        .env("SHARDD_CTL", env!("CARGO_BIN_EXE_shardctl"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .status()
        .expect("pytest runs");
    assert!(status.success(), "the Python suite failed (its output is above)");
}
