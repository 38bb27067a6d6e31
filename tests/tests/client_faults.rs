//! The client against a fake daemon that misbehaves: corrupt bytes, a
//! connection cut inside an answer, no answer at all. The caller always gets
//! a clear error and its buffer back, never a partly filled buffer as success.

use std::time::Duration;

use shardd_client::{Client, ClientError, ClientOptions};
use shardd_protocol::{
    DType, FetchResponse, FrameHeader, HEADER_LEN, HelloResponse, Key, Namespace, Opcode, ServerLimits, ShardMeta,
    Status, codec,
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

async fn read_request(stream: &mut TcpStream) -> Option<FrameHeader> {
    let mut bytes = [0u8; HEADER_LEN];
    stream.read_exact(&mut bytes).await.ok()?;
    let header = FrameHeader::decode(&bytes).ok()?;
    let mut rest = vec![0u8; header.control_len as usize + header.payload_len as usize];
    stream.read_exact(&mut rest).await.ok()?;
    Some(header)
}

async fn send(stream: &mut TcpStream, op: Opcode, id: u64, more: bool, control: &[u8], payload: &[u8]) {
    let header = FrameHeader::response(op, id, Status::Ok, more, control.len() as u32, payload.len() as u64);
    stream.write_all(&header.encode()).await.unwrap();
    stream.write_all(control).await.unwrap();
    stream.write_all(payload).await.unwrap();
}

/// Serves one connection with `fault`; returns the endpoint.
async fn fake_daemon(fault: Fault) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("tcp://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let hello = read_request(&mut stream).await.unwrap();
        let answer = HelloResponse {
            version: 1,
            server: "fake".into(),
            limits: ServerLimits {
                max_payload_len: 1 << 30,
                max_control_len: 1 << 20,
                max_inflight_requests: 8,
                chunk_size: 1 << 20,
            },
            arena: None,
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
        let Some(fetch) = read_request(&mut stream).await else {
            return;
        };
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
                send(
                    &mut stream,
                    Opcode::Fetch,
                    fetch.request_id,
                    true,
                    &control,
                    &data[..LEN / 2],
                )
                .await;
                send(
                    &mut stream,
                    Opcode::Fetch,
                    fetch.request_id,
                    false,
                    &[],
                    &data[LEN / 2..],
                )
                .await;
                // Stay around for a ping.
                if let Some(ping) = read_request(&mut stream).await {
                    send(&mut stream, Opcode::Ping, ping.request_id, false, &[], &[]).await;
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
async fn corrupt_bytes_are_reported_not_returned() {
    let client = Client::connect(&fake_daemon(Fault::CorruptBytes).await).await.unwrap();
    let (buf, result) = client.fetch_into("job", "k", None, vec![0u8; 2 * LEN]).await;
    assert_eq!(buf.len(), 2 * LEN, "the buffer comes back");
    match result {
        Err(ClientError::ChecksumMismatch {
            shard,
            expected,
            actual,
        }) => {
            assert_eq!(shard, "job/k");
            assert_eq!(expected ^ 1, actual);
        }
        other => panic!("expected a checksum mismatch, got {other:?}"),
    }
    // The connection itself is fine.
    client.ping().await.unwrap();
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
