//! Files in and out of a daemon: a file put as one shard and read back
//! into a file, on every engine and transport; a read that finds bad bytes
//! leaves no file behind; `.safetensors` files imported and exported back
//! byte for byte, or with a new header once the shards no longer match the
//! imported one; files that are not `.safetensors` are refused.

use std::path::Path;

use shardd_client::files::{self, FilesError, Output};
use shardd_client::{ClientError, DType, PutOptions};
use shardd_tests::{TestDaemon, engines, pattern, setups};

/// A `.safetensors` file of `tensors` (name, dtype, shape, bytes), laid
/// out as given (not sorted), with `__metadata__`.
fn safetensors_file(path: &Path, tensors: &[(&str, &str, Vec<u64>, Vec<u8>)]) {
    let mut header = String::from("{\"__metadata__\":{\"format\":\"pt\"}");
    let mut at = 0;
    for (name, dtype, shape, bytes) in tensors {
        let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
        header.push_str(&format!(
            ",\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{at},{}]}}",
            dims.join(","),
            at + bytes.len()
        ));
        at += bytes.len();
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    for (_, _, _, bytes) in tensors {
        file.extend_from_slice(bytes);
    }
    std::fs::write(path, file).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_goes_in_as_one_shard_and_comes_back_into_a_file() {
    for setup in setups() {
        let mut daemon = TestDaemon::start(setup.engine, "").await;
        let client = daemon.connect(setup).await;
        let dir = tempfile::tempdir().unwrap();
        // Several pieces and a partial last one.
        let data = pattern((2 * files::PIECE + 12_345) as usize, 3);
        let source = dir.path().join("weights.bin");
        std::fs::write(&source, &data).unwrap();
        let meta = files::put_file(&client, "job", "w", &source, PutOptions::default(), None)
            .await
            .unwrap();
        assert_eq!((meta.len, meta.crc32c), (data.len() as u64, crc32c::crc32c(&data)));
        let copy = dir.path().join("copy.bin");
        let got = files::get_file(&client, "job", "w", Output::File(copy.clone()), None)
            .await
            .unwrap();
        assert_eq!(got.version, 1);
        assert!(std::fs::read(&copy).unwrap() == data, "{setup:?}");
        // Empty files too.
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        files::put_file(&client, "job", "e", &empty, PutOptions::default(), None)
            .await
            .unwrap();
        let back = dir.path().join("empty.back");
        files::get_file(&client, "job", "e", Output::File(back.clone()), None)
            .await
            .unwrap();
        assert_eq!(std::fs::read(&back).unwrap(), b"");
        // A missing shard: an error, and no file.
        let missing = dir.path().join("missing.bin");
        let err = files::get_file(&client, "job", "nope", Output::File(missing.clone()), None)
            .await
            .unwrap_err();
        assert!(err.client().is_some_and(ClientError::is_not_found), "{err}");
        assert!(!missing.exists());
        daemon.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bytes_are_reported_read_again_and_never_left_in_a_file() {
    let mut daemon = TestDaemon::start(engines()[0], "").await;
    let client = daemon.client(true).await;
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(3 << 20, 4);
    client
        .put("job", "w", data.clone(), PutOptions::default())
        .await
        .unwrap();
    // The arena's copy goes bad: the read finds the mismatch, the daemon
    // drops its copy, and the read from the drive is right.
    assert!(daemon.corrupt_arena_copy("job", "w", 100));
    let copy = dir.path().join("copy.bin");
    files::get_file(&client, "job", "w", Output::File(copy.clone()), None)
        .await
        .unwrap();
    assert!(std::fs::read(&copy).unwrap() == data);
    let status = client.status().await.unwrap().arena.unwrap();
    assert_eq!(status.checksum_failures, 1);
    // Nothing but the finished file was left in the directory.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["copy.bin"]);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safetensors_files_are_imported_and_exported_byte_for_byte() {
    let mut daemon = TestDaemon::start(engines()[0], "").await;
    let client = daemon.client(false).await;
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("model.safetensors");
    let big = pattern(2 * files::PIECE as usize + 8, 9);
    safetensors_file(
        &original,
        &[
            ("encoder.layer.0.weight", "F32", vec![4, 6], pattern(96, 1)),
            ("embeddings.position_ids", "I64", vec![1, 3], pattern(24, 2)),
            ("big", "BF16", vec![big.len() as u64 / 2], big.clone()),
            ("mask", "BOOL", vec![5], vec![1, 0, 1, 1, 0]),
            ("scale", "F8_E8M0", vec![3], vec![1, 2, 3]),
        ],
    );
    let imported = files::import_safetensors(&client, &original, "job", "m/", None)
        .await
        .unwrap();
    assert_eq!(imported.tensors, 5);
    let w = client.stat("job", "m/encoder.layer.0.weight").await.unwrap().meta;
    assert_eq!((w.dtype, w.shape), (DType::F32, vec![4, 6]));
    // An element type shardd does not know is stored as raw bytes.
    assert_eq!(client.stat("job", "m/scale").await.unwrap().meta.dtype, DType::Raw);

    let exported = dir.path().join("exported.safetensors");
    let written = files::export_safetensors(&client, "job", "m/", None, &exported, None)
        .await
        .unwrap();
    assert!(written.original_header);
    assert!(std::fs::read(&exported).unwrap() == std::fs::read(&original).unwrap());

    // New bytes of the same shape keep the header; another shape needs a new one.
    client
        .put(
            "job",
            "m/mask",
            vec![0u8, 0, 0, 0, 1],
            PutOptions {
                dtype: DType::Bool,
                shape: vec![5],
                ..PutOptions::default()
            },
        )
        .await
        .unwrap();
    let written = files::export_safetensors(&client, "job", "m/", None, &exported, None)
        .await
        .unwrap();
    assert!(written.original_header);
    let bytes = std::fs::read(&exported).unwrap();
    assert_eq!(bytes.len(), std::fs::metadata(&original).unwrap().len() as usize);
    client
        .put(
            "job",
            "m/mask",
            vec![1u8; 8],
            PutOptions {
                dtype: DType::Bool,
                shape: vec![2, 4],
                ..PutOptions::default()
            },
        )
        .await
        .unwrap();
    let written = files::export_safetensors(&client, "job", "m/", None, &exported, None)
        .await
        .unwrap();
    assert!(!written.original_header);
    let bytes = std::fs::read(&exported).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    assert_eq!(header["__metadata__"]["format"], "pt", "the file's metadata is kept");
    assert_eq!(header["mask"]["shape"], serde_json::json!([2, 4]));
    let [start, end] = [0, 1].map(|i| header["big"]["data_offsets"][i].as_u64().unwrap() as usize);
    assert!(bytes[8 + len + start..8 + len + end] == big[..]);
    // Only some keys, named without the prefix.
    let some = dir.path().join("some.safetensors");
    let keys = ["m/mask".to_string(), "m/big".to_string()];
    let written = files::export_safetensors(&client, "job", "m/", Some(&keys), &some, None)
        .await
        .unwrap();
    assert_eq!(written.tensors, 2);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_safetensors_is_refused_and_nothing_is_stored() {
    let mut daemon = TestDaemon::start(engines()[0], "").await;
    let client = daemon.client(false).await;
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ").unwrap();
    let err = files::import_safetensors(&client, &bad, "job", "", None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, FilesError::Format { .. }) && err.to_string().contains("not a safetensors file"),
        "{err}"
    );
    let invalid = dir.path().join("invalid-name.safetensors");
    safetensors_file(&invalid, &[("a name with spaces", "U8", vec![2], vec![1, 2])]);
    let err = files::import_safetensors(&client, &invalid, "job", "", None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot be stored"), "{err}");
    assert!(client.list("job", "").await.unwrap().is_empty());
    let err = files::export_safetensors(&client, "job", "none/", None, &dir.path().join("x"), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nothing to export"), "{err}");
    daemon.stop().await;
}
