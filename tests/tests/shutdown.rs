//! Graceful shutdown: requests in flight finish; requests that arrive
//! meanwhile are told the daemon is shutting down.

use std::time::Duration;

use shardd_client::{ClientError, PutOptions, Status};
use shardd_protocol::{FrameHeader, HEADER_LEN, HelloRequest, Opcode, PROTOCOL_VERSION, codec};
use shardd_tests::{TestDaemon, engines, pattern};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_finish_and_late_ones_hear_why() {
    let daemon = TestDaemon::start(engines()[0], "").await;
    let client = daemon.client(false).await;
    let data = pattern(128 << 20, 4);
    client
        .put("job", "big", data.clone(), PutOptions::default())
        .await
        .unwrap();

    // A raw connection, handshaken, to send a request at a chosen moment.
    let socket = daemon.unix_endpoint().trim_start_matches("unix://").to_string();
    let mut raw = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let hello = codec::encode(&HelloRequest {
        min_version: PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        client: "late".into(),
        want_arena: false,
    })
    .unwrap();
    raw.write_all(&FrameHeader::request(Opcode::Hello, 1, hello.len() as u32, 0).encode())
        .await
        .unwrap();
    raw.write_all(&hello).await.unwrap();
    let mut header = [0u8; HEADER_LEN];
    raw.read_exact(&mut header).await.unwrap();
    let answer = FrameHeader::decode(&header).unwrap();
    let mut rest = vec![0u8; answer.control_len as usize];
    raw.read_exact(&mut rest).await.unwrap();

    let fetch = {
        let client = client.clone();
        tokio::spawn(async move { client.fetch("job", "big").await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut daemon = daemon;
    let stopping = tokio::spawn(async move {
        daemon.stop().await;
        daemon
    });
    tokio::time::sleep(Duration::from_millis(50)).await;

    raw.write_all(&FrameHeader::request(Opcode::Ping, 2, 0, 0).encode())
        .await
        .unwrap();
    raw.read_exact(&mut header).await.unwrap();
    let answer = FrameHeader::decode(&header).unwrap();
    assert_eq!((answer.request_id, answer.status), (2, Status::ShuttingDown));

    let shard = fetch.await.unwrap().expect("the fetch in flight completes");
    assert!(shard.data == data);
    let _daemon = stopping.await.unwrap();
    match client.stat("job", "big").await {
        Err(ClientError::Disconnected { .. }) => {}
        Err(e) if e.status() == Some(Status::ShuttingDown) => {}
        other => panic!("after shutdown: {other:?}"),
    }
}
