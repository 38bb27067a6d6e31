//! The client against a fake daemon that misbehaves: corrupt bytes, a
//! connection cut inside an answer, no answer at all. The caller always gets
//! a clear error and its buffer back, never a partly filled buffer as success.
//! Corrupt bytes are also reported to the daemon and fetched once more.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardd_client::{Client, ClientError, ClientOptions};
use shardd_protocol::{
    DType, FetchResponse, FrameHeader, HEADER_LEN, HelloResponse, Key, Namespace, Opcode, ServerLimits, ShardMeta,
    Status, VerifyOutcome, VerifyRequest, VerifyResponse, codec,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the fake daemon does with the first fetch it gets.
#[derive(Clone, Copy)]
enum Fault {
    /// Answers with bytes that do not match the CRC32C it announces.
    CorruptBytes,
    /// Sends half of the answer, then closes the connection.
    CutMidAnswer,
    /// Never answers.
    Silence,
}

const LEN: usize = 1 << 20;

async fn read_request(stream: &mut TcpStream) -> Option<(FrameHeader, Vec<u8>)> {
    let mut bytes = [0u8; HEADER_LEN];
    stream.read_exact(&mut bytes).await.ok()?;
    let header = FrameHeader::decode(&bytes).ok()?;
    let mut rest = vec![0u8; header.control_len as usize + header.payload_len as usize];
    stream.read_exact(&mut rest).await.ok()?;
    rest.truncate(header.control_len as usize);
    Some((header, rest))
}

async fn send(stream: &mut TcpStream, op: Opcode, id: u64, more: bool, control: &[u8], payload: &[u8]) {
    let header = FrameHeader::response(op, id, Status::Ok, more, control.len() as u32, payload.len() as u64);
    stream
        .write_all(&shardd_protocol::frame::encode(&header, control))
        .await
        .unwrap();
    stream.write_all(payload).await.unwrap();
}

/// Serves one connection with `fault`; returns the endpoint.
async fn fake_daemon(fault: Fault) -> String {
    fake_daemon_seeing(fault, Arc::default()).await
}

/// The requests a fake daemon got after the hello: their opcodes, and the
/// version a verify asked for.
type Seen = Arc<Mutex<Vec<(Opcode, Option<u64>)>>>;

/// Like [`fake_daemon`]; what it gets goes to `seen`.
async fn fake_daemon_seeing(fault: Fault, seen: Seen) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("tcp://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let (hello, _) = read_request(&mut stream).await.unwrap();
        let answer = HelloResponse {
            version: 1,
            server: "fake".into(),
            limits: ServerLimits {
                max_payload_len: 1 << 30,
                max_control_len: 1 << 20,
                max_inflight_requests: 8,
                chunk_size: 1 << 20,
                idle_timeout_ms: 300_000,
                lease_timeout_ms: 600_000,
            },
            arena: None,
            auth: None,
        };
        send(
            &mut stream,
            Opcode::Hello,
            hello.request_id,
            false,
            &codec::encode(&answer).unwrap(),
            &[],
        )
        .await;
        let Some((fetch, _)) = read_request(&mut stream).await else {
            return;
        };
        seen.lock().unwrap().push((fetch.opcode, None));
        let data = vec![0x5Au8; LEN];
        let head = FetchResponse {
            meta: ShardMeta {
                namespace: Namespace::new("job").unwrap(),
                key: Key::new("k").unwrap(),
                version: 1,
                dtype: DType::Raw,
                shape: vec![],
                len: LEN as u64,
                crc32c: crc32c::crc32c(&data) ^ 1,
                created_unix_ms: 0,
            },
            offset: 0,
            len: LEN as u64,
        };
        let control = codec::encode(&head).unwrap();
        match fault {
            Fault::CorruptBytes => {
                // Every fetch gets the same bad bytes; a verify finds nothing
                // wrong; a ping is answered.
                let mut next = Some(fetch);
                while let Some(request) = next {
                    match request.opcode {
                        Opcode::Fetch => {
                            let id = request.request_id;
                            send(&mut stream, Opcode::Fetch, id, true, &control, &data[..LEN / 2]).await;
                            send(&mut stream, Opcode::Fetch, id, false, &[], &data[LEN / 2..]).await;
                        }
                        Opcode::Verify => {
                            let answer = VerifyResponse {
                                version: Some(1),
                                outcome: VerifyOutcome::Intact,
                            };
                            let answer = codec::encode(&answer).unwrap();
                            send(&mut stream, Opcode::Verify, request.request_id, false, &answer, &[]).await;
                        }
                        op => send(&mut stream, op, request.request_id, false, &[], &[]).await,
                    }
                    next = match read_request(&mut stream).await {
                        Some((header, control)) => {
                            let version = (header.opcode == Opcode::Verify)
                                .then(|| codec::decode::<VerifyRequest>(&control).unwrap().version)
                                .flatten();
                            seen.lock().unwrap().push((header.opcode, version));
                            Some(header)
                        }
                        None => None,
                    };
                }
            }
            Fault::CutMidAnswer => {
                send(
                    &mut stream,
                    Opcode::Fetch,
                    fetch.request_id,
                    true,
                    &control,
                    &data[..LEN / 2],
                )
                .await;
                // Half of the next frame, then gone.
                let header =
                    FrameHeader::response(Opcode::Fetch, fetch.request_id, Status::Ok, false, 0, (LEN / 2) as u64);
                stream.write_all(&header.encode()).await.unwrap();
                stream.write_all(&data[..1000]).await.unwrap();
            }
            Fault::Silence => {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        }
    });
    endpoint
}

#[tokio::test]
async fn corrupt_bytes_are_reported_to_the_daemon_fetched_again_and_never_returned() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let endpoint = fake_daemon_seeing(Fault::CorruptBytes, seen.clone()).await;
    let client = Client::connect(&endpoint).await.unwrap();
    let (buf, result) = client.fetch_into("job", "k", None, vec![0u8; 2 * LEN]).await;
    assert_eq!(buf.len(), 2 * LEN, "the buffer comes back");
    match result {
        Err(ClientError::ChecksumMismatch {
            shard,
            version,
            expected,
            actual,
        }) => {
            assert_eq!((shard.as_str(), version), ("job/k", 1));
            assert_eq!(expected ^ 1, actual);
        }
        other => panic!("expected a checksum mismatch, got {other:?}"),
    }
    // The connection itself is fine.
    client.ping().await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (Opcode::Fetch, None),
            (Opcode::Verify, Some(1)),
            (Opcode::Fetch, None),
            (Opcode::Ping, None)
        ],
        "the mismatch was reported with the version read, then fetched once more"
    );
}

#[tokio::test]
async fn a_connection_cut_inside_an_answer_fails_the_fetch_cleanly() {
    let client = Client::connect(&fake_daemon(Fault::CutMidAnswer).await).await.unwrap();
    let (buf, result) = client.fetch_into("job", "k", None, vec![0u8; LEN]).await;
    assert_eq!(buf.len(), LEN);
    let err = result.unwrap_err();
    assert!(matches!(err, ClientError::Disconnected { .. }), "{err:?}");
    // Later requests fail at once with the same cause, no hang.
    let err = client.stat("job", "k").await.unwrap_err();
    assert!(matches!(err, ClientError::Disconnected { .. }), "{err:?}");
}

#[tokio::test]
async fn a_silent_daemon_hits_the_request_timeout_and_the_buffer_comes_back() {
    let options = ClientOptions {
        request_timeout: Some(Duration::from_millis(300)),
        ..ClientOptions::default()
    };
    let client = Client::connect_with(&fake_daemon(Fault::Silence).await, options)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (buf, result) = client.fetch_into("job", "k", None, vec![7u8; 64]).await;
    assert!(
        matches!(result, Err(ClientError::Timeout { op: "fetch", .. })),
        "{result:?}"
    );
    assert_eq!(buf, vec![7u8; 64]);
    assert!(started.elapsed() < Duration::from_secs(5));
    let err = client.stat("job", "k").await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout { op: "stat", .. }), "{err:?}");
}
