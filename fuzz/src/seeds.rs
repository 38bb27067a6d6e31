//! Writes the seed corpora: real frames, control messages, names, shard
//! file headers and configuration files, as the daemon and its clients
//! make them, into `corpus/<target>/` (the fuzzer starts from these and
//! adds what it finds).

use std::path::{Path, PathBuf};

use shardd::store::format::{ShardLayout, encode_header};
use shardd_protocol::*;

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let dir = dir.join(target);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    std::fs::write(dir.join(name), bytes).unwrap_or_else(|e| panic!("write {name}: {e}"));
}

fn meta(len: u64) -> ShardMeta {
    ShardMeta {
        namespace: Namespace::new("job-7").unwrap(),
        key: Key::new("layers.3.attn.qkv.weight").unwrap(),
        version: 42,
        dtype: DType::BF16,
        shape: vec![len / 2],
        len,
        crc32c: 0x1234_5678,
        created_unix_ms: 1_780_000_000_000,
    }
}

fn main() {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    let fetch = FetchRequest {
        namespace: Namespace::new("job-7").unwrap(),
        key: Key::new("layers.3.mlp.up.weight").unwrap(),
        range: Some(ByteRange {
            offset: 4096,
            len: 1 << 20,
        }),
        max_len: Some(1 << 20),
    };
    let put = PutRequest {
        namespace: Namespace::new("job-7").unwrap(),
        key: Key::new("optimizer/exp_avg.17").unwrap(),
        version: None,
        dtype: DType::F32,
        shape: vec![256, 1024],
        crc32c: Some(7),
        durability: Durability::default(),
    };
    let hello = HelloRequest {
        min_version: 1,
        max_version: PROTOCOL_VERSION,
        client: "shardd-client 0.1.0".into(),
        want_arena: true,
        auth: None,
    };
    let batch = FetchBatchRequest {
        members: vec![fetch.clone(); 3],
        places: (0..3)
            .map(|i| RegionPlace {
                region: 1,
                offset: i << 20,
                len: 1 << 20,
            })
            .collect(),
    };
    let put_batch = PutBatchRequest {
        members: vec![PutMember {
            put: put.clone(),
            len: 1 << 20,
            source: Some(RegionPlace {
                region: 2,
                offset: 0,
                len: 1 << 20,
            }),
        }],
    };
    let parts = vec![
        BatchPart::Placed {
            index: 0,
            head: PlacedHead::of(&meta(1 << 20), 0, 1 << 20),
        },
        BatchPart::Head {
            index: 1,
            head: FetchResponse {
                meta: meta(4096),
                offset: 0,
                len: 4096,
            },
        },
        BatchPart::Data { index: 1, at: 0 },
    ];
    let stat = StatRequest {
        namespace: fetch.namespace.clone(),
        key: fetch.key.clone(),
    };
    // (selector of shardd_fuzz::decode_control, opcode, encoding)
    let messages: Vec<(u8, Opcode, Vec<u8>)> = vec![
        (0, Opcode::Hello, codec::encode(&hello).unwrap()),
        (2, Opcode::Put, codec::encode(&put).unwrap()),
        (
            3,
            Opcode::Put,
            codec::encode(&PutResponse { meta: meta(1 << 20) }).unwrap(),
        ),
        (4, Opcode::Fetch, codec::encode(&fetch).unwrap()),
        (6, Opcode::Stat, codec::encode(&stat).unwrap()),
        (32, Opcode::FetchBatch, codec::encode(&batch).unwrap()),
        (34, Opcode::PutBatch, codec::encode(&put_batch).unwrap()),
        (39, Opcode::Authenticate, codec::encode(&AuthenticateRequest { proof: [7; 32] }).unwrap()),
        (
            40,
            Opcode::Authenticate,
            codec::encode(&AuthenticateResponse {
                identity: "trainers".into(),
            })
            .unwrap(),
        ),
        (41, Opcode::FetchBatch, codec::encode(&parts).unwrap()),
    ];
    for (i, (selector, opcode, control)) in messages.iter().enumerate() {
        let mut selected = vec![*selector];
        selected.extend_from_slice(control);
        write(&dir, "control", &format!("message-{i}"), &selected);
        let header = FrameHeader::request(*opcode, i as u64 + 1, control.len() as u32, 0);
        write(&dir, "frame", &format!("frame-{i}"), &frame::encode(&header, control));
    }
    for (i, name) in ["job-7", "layers.3.attn.qkv.weight", "optimizer/exp_avg.17", "a"]
        .iter()
        .enumerate()
    {
        write(&dir, "names", &format!("text-{i}"), name.as_bytes());
        write(
            &dir,
            "names",
            &format!("encoded-{i}"),
            &codec::encode(&name.to_string()).unwrap(),
        );
    }
    for (i, (len, chunk_size)) in [
        (0u64, 1u32 << 20),
        (4096, 1 << 20),
        (5 << 20, 1 << 20),
        (3 << 20, 64 << 10),
    ]
    .into_iter()
    .enumerate()
    {
        let meta = meta(len);
        let chunks = ShardLayout::chunk_count(len, chunk_size);
        let layout = ShardLayout {
            payload_offset: ShardLayout::header_len(codec::encode(&meta).unwrap().len(), chunks),
            chunk_size,
            chunk_crcs: (0..chunks as u32).map(|c| c.wrapping_mul(0x9e37_79b9)).collect(),
        };
        let mut header = vec![0u8];
        header.extend(encode_header(&meta, &layout).unwrap());
        write(&dir, "shard_header", &format!("header-{i}"), &header);
    }
    // The key exchange: a key file, and a hello with its offer followed by
    // the right proof, and by a wrong one.
    let key = shardd_fuzz::fuzz_key();
    let mut file = vec![0u8];
    file.extend_from_slice(key.to_file_text().as_bytes());
    write(&dir, "hello", "key-file", &file);
    let offered = HelloRequest {
        auth: Some(key.offer().unwrap()),
        want_arena: false,
        ..hello.clone()
    };
    let exchange = shardd_fuzz::Exchange {
        hello: codec::encode(&offered).unwrap(),
        proof: key.prove(
            auth::Side::Client,
            &shardd_fuzz::transcript(offered.auth.as_ref().unwrap(), &offered.client),
        ),
    };
    write(&dir, "hello", "right-proof", &exchange.to_input());
    let wrong = shardd_fuzz::Exchange {
        proof: [0; 32],
        ..exchange
    };
    write(&dir, "hello", "wrong-proof", &wrong.to_input());
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/shardd.toml");
    let example = std::fs::read(&deploy).unwrap_or_else(|e| panic!("read {}: {e}", deploy.display()));
    write(&dir, "config", "deploy", &example);
    let access = "[[access.rules]]\nname = \"each job's trainers\"\ngroups = [\"root\"]\n\
                  namespaces = [\"job-a-*\"]\nrights = [\"read\", \"write\", \"admin\"]\n\n\
                  [[namespaces]]\npattern = \"swap-*\"\nmax_drive_bytes = \"2TiB\"\n\
                  max_arena_bytes = \"16GiB\"\nidle_ttl = \"6h\"\n";
    write(&dir, "config", "access", access.as_bytes());
    let auth = "[server]\ntcp = \"10.0.0.1:7070\"\n[auth]\nkeys = [\"/etc/shardd/keys/trainers.key\"]\n\
                [[access.rules]]\nkeys = [\"trainers\"]\nnamespaces = [\"job-*\"]\nrights = [\"read\"]\n";
    write(&dir, "config", "auth", auth.as_bytes());
    write(&dir, "config", "auth-none", b"auth = \"none\"\n[server]\ntcp = \"0.0.0.0:7070\"\n");
    let tls = "[tls]\nlisten = \"10.0.0.1:7443\"\ncert = \"/etc/shardd/tls/node.crt\"\n\
               key = \"/etc/shardd/tls/node.key\"\nclient_ca = \"/etc/shardd/tls/ca.crt\"\n\
               [[access.rules]]\ncertificates = [\"trainer-a\"]\nnamespaces = [\"job-*\"]\nrights = [\"read\"]\n";
    write(&dir, "config", "tls", tls.as_bytes());
    println!("seed corpora written under {}", dir.display());
}
