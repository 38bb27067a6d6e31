//! A client that speaks the protocol by hand, through the protocol crate's
//! frame codec: for tests that send requests at chosen moments, read answers
//! frame by frame, or send malformed frames on purpose ([`RawClient::write_raw`]
//! with bytes built from `FrameHeader` itself).

use std::time::Duration;

use serde::Serialize;
use shardd_protocol::auth::{AuthKey, Side, Transcript};
use shardd_protocol::frame::io::FrameReader;
use shardd_protocol::{
    AuthenticateRequest, FrameHeader, HelloRequest, HelloResponse, Limits, MAX_CONTROL_LEN, Opcode, PROTOCOL_VERSION,
    Status, codec, frame,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::TestDaemon;

/// How long a raw client waits for an answer before the test fails.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// A connection driven by hand.
pub struct RawClient {
    frames: FrameReader<Box<dyn AsyncRead + Unpin + Send>>,
    writer: Box<dyn AsyncWrite + Unpin + Send>,
    /// The Unix socket, to send descriptors on.
    unix: Option<std::os::fd::RawFd>,
}

impl std::fmt::Debug for RawClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawClient")
    }
}

impl RawClient {
    /// Connects to `daemon` over TCP or its Unix socket; no hello yet.
    pub async fn connect(daemon: &TestDaemon, tcp: bool) -> RawClient {
        type Halves = (Box<dyn AsyncRead + Unpin + Send>, Box<dyn AsyncWrite + Unpin + Send>);
        let ((reader, writer), unix): (Halves, _) = if tcp {
            let addr = daemon.tcp_endpoint().trim_start_matches("tcp://").to_string();
            let (r, w) = tokio::net::TcpStream::connect(addr).await.unwrap().into_split();
            ((Box::new(r), Box::new(w)), None)
        } else {
            let stream = tokio::net::UnixStream::connect(daemon.socket_path()).await.unwrap();
            let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
            let (r, w) = stream.into_split();
            ((Box::new(r), Box::new(w)), Some(fd))
        };
        let limits = Limits {
            max_control_len: MAX_CONTROL_LEN,
            max_payload_len: u64::MAX,
        };
        RawClient {
            frames: FrameReader::new(reader, 64 * 1024, limits, ANSWER_WAIT),
            writer,
            unix,
        }
    }

    /// Connects and says hello as `name` (asking for the arena if
    /// `want_arena`: a raw client reads past the descriptor, which closes
    /// it); over TCP it authenticates with the test key. The hello must be
    /// accepted.
    pub async fn hello(daemon: &TestDaemon, tcp: bool, name: &str, want_arena: bool) -> RawClient {
        let mut raw = RawClient::connect(daemon, tcp).await;
        let key = tcp.then(crate::test_key);
        let hello = RawClient::hello_request(name, want_arena, key);
        let answer = raw.say_hello(&hello).await;
        if let Some(key) = key {
            let (proof, _) = RawClient::proof(key, &hello, &answer);
            raw.request(Opcode::Authenticate, 2, &AuthenticateRequest { proof })
                .await;
            let (header, _) = raw.recv().await.expect("the proof is answered");
            assert_eq!(header.status, Status::Ok, "the proof is accepted");
        }
        raw
    }

    /// A hello as `name`, offering `key` (with a fresh nonce) if given.
    pub fn hello_request(name: &str, want_arena: bool, key: Option<&AuthKey>) -> HelloRequest {
        HelloRequest {
            min_version: PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            client: name.into(),
            want_arena,
            auth: key.map(|k| k.offer().unwrap()),
        }
    }

    /// Sends `hello`; its answer must be `ok`.
    pub async fn say_hello(&mut self, hello: &HelloRequest) -> HelloResponse {
        self.request(Opcode::Hello, 1, hello).await;
        let (header, control) = self.recv().await.expect("the hello is answered");
        assert_eq!(header.status, Status::Ok, "the hello is accepted");
        codec::decode(&control).unwrap()
    }

    /// The client's proof of `key` after `hello` was answered by `answer`,
    /// and whether the daemon's proof in it held.
    pub fn proof(key: &AuthKey, hello: &HelloRequest, answer: &HelloResponse) -> ([u8; 32], bool) {
        let (transcript, daemon_proof) =
            Transcript::of_exchange(hello, answer).expect("the hello offered a key and the daemon took it");
        (
            key.prove(Side::Client, &transcript),
            key.holds(Side::Server, &transcript, daemon_proof),
        )
    }

    /// Sends a request frame with `control` bytes as they are and `payload`.
    pub async fn send(&mut self, op: Opcode, id: u64, control: &[u8], payload: &[u8]) {
        let header = FrameHeader::request(op, id, control.len() as u32, payload.len() as u64);
        self.write_raw(&frame::encode(&header, control)).await;
        self.write_raw(payload).await;
    }

    /// Sends a request carrying `message`, without payload.
    pub async fn request<T: Serialize>(&mut self, op: Opcode, id: u64, message: &T) {
        let bytes = frame::request(op, id, message, 0).unwrap();
        self.write_raw(&bytes).await;
    }

    /// Sends a request carrying `message`, with `fd` attached to its first
    /// byte (Unix only), as a region registration sends its memfd.
    pub async fn request_with_fd<T: Serialize>(&mut self, op: Opcode, id: u64, message: &T, fd: std::os::fd::RawFd) {
        let bytes = frame::request(op, id, message, 0).unwrap();
        self.frame_with_fd(&bytes, fd).await;
    }

    /// Sends a request whose control message is `control` as it is (valid
    /// or not), with `fd` attached to its first byte (Unix only).
    pub async fn send_with_fd(&mut self, op: Opcode, id: u64, control: &[u8], fd: std::os::fd::RawFd) {
        let header = FrameHeader::request(op, id, control.len() as u32, 0);
        self.frame_with_fd(&frame::encode(&header, control), fd).await;
    }

    async fn frame_with_fd(&mut self, bytes: &[u8], fd: std::os::fd::RawFd) {
        self.writer.flush().await.unwrap();
        let socket = self.unix.expect("descriptors go over the Unix socket");
        // The frame is small: one sendmsg takes it whole.
        let sent = shardd_protocol::fdpass::send_with_fd(socket, bytes, fd).unwrap();
        assert_eq!(sent, bytes.len());
    }

    /// Writes `bytes` as they are: the lower-level writer, for frames
    /// malformed on purpose.
    pub async fn write_raw(&mut self, bytes: &[u8]) {
        self.try_write_raw(bytes).await.unwrap();
    }

    /// [`RawClient::write_raw`], for writes the daemon may refuse (it
    /// closed the connection, or stopped reading it).
    pub async fn try_write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes).await?;
        self.writer.flush().await
    }

    /// The next frame must be an error answer to request `id` with
    /// `status`, whose message contains `needle`.
    pub async fn expect_error(&mut self, status: Status, id: u64, needle: &str) {
        let (header, control) = self.recv().await.expect("an error frame");
        let body: shardd_protocol::ErrorResponse = codec::decode(&control).unwrap();
        assert_eq!((header.status, header.request_id), (status, id), "{}", body.message);
        assert!(body.message.contains(needle), "{:?} lacks {needle:?}", body.message);
    }

    /// The daemon must have closed the connection (after any frames read).
    pub async fn expect_closed(&mut self) {
        assert!(self.recv().await.is_none(), "the daemon should close the connection");
    }

    /// The next frame's header and control message (its payload is read
    /// and dropped), or `None` once the daemon has closed the connection.
    /// Fails the test if nothing comes within ten seconds.
    pub async fn recv(&mut self) -> Option<(FrameHeader, Vec<u8>)> {
        let next = async {
            let header = self.frames.next_header().await.ok()??;
            let control = self.frames.control(&header).await.ok()?;
            self.frames.skip(header.payload_len).await.ok()?;
            Some((header, control))
        };
        tokio::time::timeout(ANSWER_WAIT, next)
            .await
            .expect("an answer or the end of the connection within 10 s")
    }
}
