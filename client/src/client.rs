//! The async client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use shardd_protocol::{
    ByteRange, DEFAULT_MAX_PAYLOAD_LEN, DType, DeleteRequest, DeleteResponse, DropNamespaceRequest,
    DropNamespaceResponse, Durability, EvictMode, EvictRequest, EvictResponse, FetchRequest, HelloRequest,
    HelloResponse, Key, ListRequest, ListResponse, MAX_LIST_LIMIT, Namespace, NamespaceUsage, NamespacesRequest,
    NamespacesResponse, Opcode, PROTOCOL_VERSION, PrefetchItem, PrefetchRequest, PrefetchResponse, PutRequest,
    PutResponse, ScheduleRequest, ScheduleResponse, SetQuotaRequest, SetQuotaResponse, ShardMeta, StatRequest,
    StatResponse, Status, StatusResponse, VerifyRequest, VerifyResponse, ViewRequest, ViewResponse, codec,
};
use tokio::net::{TcpStream, UnixStream};

use crate::AuthKey;
use crate::arena::{self, ArenaMap};
use crate::connection::{Connection, Dest, FetchBuf, FetchDone};
use crate::progress::Progress;
use crate::{ClientError, Endpoint, ShardView};

/// Send buffer asked for on Unix-socket connections.
mod batch;
mod regions;

pub use batch::{BatchResult, PutItem, Wanted};
pub use regions::{PreparedFetch, RegisteredRegion};

const UNIX_SEND_BUFFER: usize = 4 << 20;

/// A fetch into a caller's buffer of a shard not in the arena copies it out
/// of the arena as it loads when it has at least this many bytes (smaller
/// ones come over the socket, one round trip sooner).
const FOLLOW_MIN: u64 = 4 << 20;

/// The piece of a loading shard each view of such a fetch asks for.
const FOLLOW_PIECE: u64 = 8 << 20;

/// Views of those pieces asked for at once.
const FOLLOW_AHEAD: usize = 8;

/// How a view is asked for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum View {
    /// Of a shard in the arena now, else `busy` at once.
    IfResident,
    /// Loading the shard into the arena first if needed.
    Load,
    /// Like `Load`, a further piece of one fetch: the daemon counts the
    /// fetch once.
    Continue,
}

/// How long [`Client::return_leases`] waits for the daemon.
pub const RETURN_LEASES_WAIT: Duration = Duration::from_secs(1);

/// Connection settings.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Longest wait to connect and finish the hello.
    pub connect_timeout: Duration,
    /// Longest wait for any one request; `None` waits as long as the
    /// connection lives.
    pub request_timeout: Option<Duration>,
    /// Longest wait for progress inside an answer frame; a daemon that
    /// stalls longer is considered gone and the connection is closed.
    pub io_timeout: Duration,
    /// Check whole-shard fetches that come over the socket against the
    /// shard's CRC32C as the bytes arrive (end to end, on top of the
    /// daemon's own check of every chunk it reads from the drive).
    pub verify_checksums: bool,
    /// Also check whole-shard fetches read from the mapped arena. Off by
    /// default: those bytes never crossed a socket, and the daemon verified
    /// every chunk when it read it from the drive.
    pub verify_views: bool,
    /// Largest answer an owned fetch ([`Client::fetch`]) allocates for.
    pub max_fetch_alloc: u64,
    /// Name sent in the hello, shown in the daemon's logs.
    pub client_name: String,
    /// Over a Unix socket, map the daemon's arena to read fetches in place
    /// (zero copy): `fetch_into` then copies a resident shard once, from the
    /// arena into the caller's buffer (one not yet resident is copied out
    /// of the arena piece by piece as it loads, or, under 4 MiB, comes over
    /// the socket while it loads), and `fetch_view` reads without any copy.
    pub zero_copy: bool,
    /// The key to authenticate with over TCP (see [`crate::auth`]); `None`
    /// reads the file named by `SHARDD_AUTH_KEY_FILE`, if set, at connect.
    pub auth_key: Option<AuthKey>,
    /// How `tls://` connections check the daemon and show themselves (see
    /// [`crate::tls`]).
    pub tls: crate::tls::TlsOptions,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(10),
            request_timeout: None,
            io_timeout: Duration::from_secs(60),
            verify_checksums: true,
            verify_views: false,
            max_fetch_alloc: DEFAULT_MAX_PAYLOAD_LEN,
            client_name: format!("shardd-client {}", env!("CARGO_PKG_VERSION")),
            zero_copy: true,
            auth_key: None,
            tls: crate::tls::TlsOptions::default(),
        }
    }
}

/// How to store a shard.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Version to store (must be newer than the stored one); `None` stores
    /// the next version, above the stored one and above those of puts of
    /// the key still in progress.
    pub version: Option<u64>,
    /// Element type.
    pub dtype: DType,
    /// Tensor shape (may be empty).
    pub shape: Vec<u64>,
    /// When the daemon acknowledges.
    pub durability: Durability,
}

/// A fetched shard (or range of one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    /// The shard's metadata.
    pub meta: ShardMeta,
    /// Offset of `data` in the shard.
    pub offset: u64,
    /// The bytes.
    pub data: Vec<u8>,
}

/// What a fetch into a caller's buffer placed there: `len` bytes from the
/// start of the buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchInfo {
    /// The shard's metadata.
    pub meta: ShardMeta,
    /// Offset in the shard of the first byte.
    pub offset: u64,
    /// Bytes written to the buffer.
    pub len: u64,
}

/// A connection to one daemon. Cheap to clone; clones share the connection,
/// and any number of requests may be in flight on it at once (pipelined).
#[derive(Clone, Debug)]
pub struct Client {
    conn: Arc<Connection>,
    server: Arc<HelloResponse>,
    options: Arc<ClientOptions>,
    /// The daemon's arena, when mapped (Unix socket, zero copy granted).
    arena: Option<Arc<ArenaMap>>,
    /// Why the arena the daemon offered was not mapped.
    arena_refused: Option<Arc<str>>,
}

fn names(namespace: &str, key: &str) -> Result<(Namespace, Key), ClientError> {
    Ok((Namespace::new(namespace)?, Key::new(key)?))
}

impl Client {
    /// Connects with default options (see [`Endpoint::parse`] for the forms).
    pub async fn connect(endpoint: &str) -> Result<Client, ClientError> {
        Client::connect_with(endpoint, ClientOptions::default()).await
    }

    /// Connects and performs the version handshake.
    pub async fn connect_with(endpoint: &str, options: ClientOptions) -> Result<Client, ClientError> {
        let parsed = Endpoint::parse(endpoint)?;
        let name = parsed.to_string();
        let limit = options.connect_timeout;
        match tokio::time::timeout(limit, Client::establish(parsed, name.clone(), options)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Connect {
                endpoint: name,
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer within {limit:?}")),
            }),
        }
    }

    async fn establish(endpoint: Endpoint, name: String, options: ClientOptions) -> Result<Client, ClientError> {
        let connect_error = |source| ClientError::Connect {
            endpoint: name.clone(),
            source,
        };
        let max_alloc = options.max_fetch_alloc;
        let mut hello = HelloRequest {
            min_version: PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            client: options.client_name.clone(),
            want_arena: options.zero_copy,
            auth: None,
        };
        let (conn, server, arena) = match &endpoint {
            Endpoint::Unix(path) => {
                let mut stream = UnixStream::connect(path).await.map_err(connect_error)?;
                // Large puts move in large pieces; the kernel caps the size.
                let _ = socket2::SockRef::from(&stream).set_send_buffer_size(UNIX_SEND_BUFFER);
                let (server, arena) = arena::hello_unix(&mut stream, &hello, &name).await?;
                let (r, w) = stream.into_split();
                let conn = Connection::start(name.clone(), r, w, max_alloc, options.io_timeout, &server.limits);
                (conn, server, arena)
            }
            Endpoint::Tcp(addr) | Endpoint::Tls(addr) => {
                let key = crate::auth::key_for(options.auth_key.as_ref(), &name)?;
                if let Some(key) = &key {
                    hello.auth = Some(key.offer().map_err(|e| ClientError::Auth {
                        endpoint: name.clone(),
                        reason: e.to_string(),
                    })?);
                }
                let stream = TcpStream::connect(addr.as_str()).await.map_err(connect_error)?;
                stream.set_nodelay(true).map_err(connect_error)?;
                let limits = |server: &HelloResponse| server.limits;
                if let Endpoint::Tls(_) = &endpoint {
                    let mut stream = crate::tls::connect(stream, addr, &options.tls, &name).await?;
                    // The certificate proved who the daemon is.
                    let server = arena::hello_tcp(&mut stream, &hello, key.as_ref(), true, &name).await?;
                    let (r, w) = tokio::io::split(stream);
                    let conn = Connection::start(name.clone(), r, w, max_alloc, options.io_timeout, &limits(&server));
                    (conn, server, None)
                } else {
                    let mut stream = stream;
                    let server = arena::hello_tcp(&mut stream, &hello, key.as_ref(), false, &name).await?;
                    let (r, w) = stream.into_split();
                    let conn = Connection::start(name.clone(), r, w, max_alloc, options.io_timeout, &limits(&server));
                    (conn, server, None)
                }
            }
        };
        let (arena, arena_refused) = match arena {
            Some(Ok(map)) => (Some(map), None),
            Some(Err(reason)) => {
                tracing::warn!(
                    endpoint = %name,
                    "zero-copy fetches are off on this connection, fetches copy over the socket: {reason}"
                );
                (None, Some(Arc::from(reason)))
            }
            None => (None, None),
        };
        Ok(Client {
            conn: Arc::new(conn),
            server: Arc::new(server),
            options: Arc::new(options),
            arena,
            arena_refused,
        })
    }

    /// What the daemon said about itself in the handshake (name, limits).
    pub fn server(&self) -> &HelloResponse {
        &self.server
    }

    /// The endpoint this client is connected to.
    pub fn endpoint(&self) -> &str {
        self.conn.endpoint()
    }

    /// Gives back at once the leases of dropped views still waiting to
    /// travel with the next view request.
    pub(crate) fn flush_releases(&self) {
        self.conn.flush_releases();
    }

    /// Gives back the leases of views already dropped and waits until the
    /// daemon has taken them, so that their shards can be evicted at once
    /// (views still alive keep theirs). A process about to exit calls this
    /// last: the daemon holds the leases of a closed connection for
    /// a moment longer, in case a view of it is still being read.
    /// Waits at most [`RETURN_LEASES_WAIT`] (a daemon that does not answer
    /// must not hold up a process's exit).
    pub async fn return_leases(&self) -> Result<(), ClientError> {
        self.conn.send_releases().await;
        // Frames are written in order, and the daemon takes releases before
        // it answers the ping: also one already queued by the release task.
        let ping = self.conn.call(Opcode::Ping, Vec::new(), None, Some(RETURN_LEASES_WAIT));
        ping.await.map(drop)
    }

    /// Whether the connection is still up. Once it is down every request
    /// fails with [`ClientError::Disconnected`]: connect again.
    pub fn is_connected(&self) -> bool {
        !self.conn.is_closed()
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        op: Opcode,
        request: Option<&Req>,
    ) -> Result<Resp, ClientError> {
        let control = match request {
            Some(r) => encode(r)?,
            None => Vec::new(),
        };
        let reply = self.conn.call(op, control, None, self.options.request_timeout).await?;
        decode(&self.conn, &reply.control)
    }

    /// Round trip to the daemon; returns how long it took.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let start = Instant::now();
        self.conn
            .call(Opcode::Ping, Vec::new(), None, self.options.request_timeout)
            .await?;
        Ok(start.elapsed())
    }

    /// Stores `data` as the shard `namespace/key`; returns what is stored.
    /// The daemon checks the bytes against a CRC32C computed here.
    pub async fn put(
        &self,
        namespace: &str,
        key: &str,
        data: impl Into<Bytes>,
        options: PutOptions,
    ) -> Result<ShardMeta, ClientError> {
        self.put_reporting(namespace, key, data.into(), options, None).await
    }

    /// [`Client::put`], telling `progress` of the bytes as they are sent
    /// (for puts of large files).
    pub async fn put_reporting(
        &self,
        namespace: &str,
        key: &str,
        data: Bytes,
        options: PutOptions,
        progress: Option<Arc<dyn Progress>>,
    ) -> Result<ShardMeta, ClientError> {
        let (namespace, key) = names(namespace, key)?;
        let max = self.server.limits.max_payload_len;
        if data.len() as u64 > max {
            return Err(ClientError::TooLarge {
                len: data.len() as u64,
                max,
            });
        }
        let request = PutRequest {
            namespace,
            key,
            version: options.version,
            dtype: options.dtype,
            shape: options.shape,
            crc32c: Some(crc32c::crc32c(&data)),
            durability: options.durability,
        };
        let control = encode(&request)?;
        let reply = self
            .conn
            .call_reporting(Opcode::Put, control, Some(data), self.options.request_timeout, progress)
            .await?;
        let response: PutResponse = decode(&self.conn, &reply.control)?;
        Ok(response.meta)
    }

    /// Fetches a whole shard into a new buffer, verifying its checksum.
    pub async fn fetch(&self, namespace: &str, key: &str) -> Result<Shard, ClientError> {
        self.fetch_owned(namespace, key, None).await
    }

    /// Fetches `len` bytes at `offset` of a shard into a new buffer.
    pub async fn fetch_range(&self, namespace: &str, key: &str, offset: u64, len: u64) -> Result<Shard, ClientError> {
        self.fetch_owned(namespace, key, Some(ByteRange { offset, len })).await
    }

    /// A fetch into a new buffer; one that does not match the shard's
    /// checksum is reported to the daemon and made once more.
    async fn fetch_owned(&self, namespace: &str, key: &str, range: Option<ByteRange>) -> Result<Shard, ClientError> {
        let (namespace, key) = names(namespace, key)?;
        match self.fetch_owned_once(&namespace, &key, range).await {
            Err(ClientError::ChecksumMismatch { version, .. }) => {
                self.report_mismatch(&namespace, &key, version).await;
                self.fetch_owned_once(&namespace, &key, range).await
            }
            result => result,
        }
    }

    async fn fetch_owned_once(
        &self,
        namespace: &Namespace,
        key: &Key,
        range: Option<ByteRange>,
    ) -> Result<Shard, ClientError> {
        let verify = range.is_none() && self.options.verify_checksums;
        let request = FetchRequest {
            namespace: namespace.clone(),
            key: key.clone(),
            range,
            max_len: Some(self.options.max_fetch_alloc),
        };
        if self.arena.is_some() {
            match self.view(request.clone(), View::IfResident).await {
                Ok(view) => {
                    let mut data = vec![0u8; view.len() as usize];
                    let crc = view.copy_to(&mut data, verify && self.options.verify_views)?;
                    check_crc(view.meta(), crc)?;
                    return Ok(Shard {
                        meta: view.meta().clone(),
                        offset: view.offset(),
                        data,
                    });
                }
                // Not in the arena now: read it over the socket (which follows
                // the load into the arena, chunk by chunk).
                Err(e) if view_unavailable(&e) => {}
                Err(e) => return Err(e),
            }
        }
        let FetchRequest { namespace, key, .. } = request;
        let request = FetchRequest {
            namespace,
            key,
            range,
            max_len: Some(self.options.max_fetch_alloc),
        };
        let control = encode(&request)?;
        let FetchDone { dest, result } = self
            .conn
            .fetch(control, Dest::Alloc(None), verify, self.options.request_timeout)
            .await;
        let head = result?;
        let data = dest.into_vec();
        Ok(Shard {
            meta: head.meta,
            offset: head.offset,
            data,
        })
    }

    /// Fetches a shard (or `range` of it) straight into the caller's buffer,
    /// from its start, without an intermediate copy. The buffer comes back
    /// in every case; on error its contents are unspecified. A whole shard
    /// that does not match its checksum is reported to the daemon and
    /// fetched once more.
    pub async fn fetch_into<B: FetchBuf>(
        &self,
        namespace: &str,
        key: &str,
        range: Option<ByteRange>,
        buf: B,
    ) -> (B, Result<FetchInfo, ClientError>) {
        let (namespace, key) = match names(namespace, key) {
            Ok(names) => names,
            Err(e) => return (buf, Err(e)),
        };
        match self.fetch_into_once(&namespace, &key, range, buf).await {
            (buf, Err(ClientError::ChecksumMismatch { version, .. })) => {
                self.report_mismatch(&namespace, &key, version).await;
                self.fetch_into_once(&namespace, &key, range, buf).await
            }
            done => done,
        }
    }

    async fn fetch_into_once<B: FetchBuf>(
        &self,
        namespace: &Namespace,
        key: &Key,
        range: Option<ByteRange>,
        mut buf: B,
    ) -> (B, Result<FetchInfo, ClientError>) {
        let capacity = buf.as_mut().len() as u64;
        let request = FetchRequest {
            namespace: namespace.clone(),
            key: key.clone(),
            range,
            max_len: Some(capacity),
        };
        let verify = range.is_none() && self.options.verify_checksums;
        if self.arena.is_some() {
            // Read in place from the arena; the one copy goes into `buf`.
            match self.view(request.clone(), View::IfResident).await {
                Ok(view) => {
                    let crc = view.copy_to(buf.as_mut(), verify && self.options.verify_views);
                    let result = crc.and_then(|crc| check_crc(view.meta(), crc)).map(|()| FetchInfo {
                        meta: view.meta().clone(),
                        offset: view.offset(),
                        len: view.len(),
                    });
                    return (buf, result);
                }
                // Not in the arena now: copy it out of the arena as it loads,
                // or else read it over the socket (which also follows the
                // load, chunk by chunk, at the cost of a second copy).
                Err(e) if view_unavailable(&e) => {
                    match self
                        .follow_load(&request, buf.as_mut(), verify && self.options.verify_views)
                        .await
                    {
                        Ok(Some(info)) => return (buf, Ok(info)),
                        Ok(None) => {}
                        Err(e) => return (buf, Err(e)),
                    }
                }
                Err(e) => return (buf, Err(e)),
            }
        }
        let control = match encode(&request) {
            Ok(control) => control,
            Err(e) => return (buf, Err(e)),
        };
        let FetchDone { dest, result } = self
            .conn
            .fetch(control, Dest::caller(buf), verify, self.options.request_timeout)
            .await;
        let Some(buf) = dest.into_caller::<B>() else {
            unreachable!("a fetch always returns the caller's buffer");
        };
        let result = match result {
            Ok(head) => Ok(FetchInfo {
                meta: head.meta,
                offset: head.offset,
                len: head.len,
            }),
            // The daemon refused to send more than the buffer holds: say so
            // in the caller's terms, with the size it needs.
            Err(e) if e.status() == Some(Status::TooLarge) => {
                let needed = match range {
                    Some(range) => Some(range.len),
                    None => self
                        .stat(namespace.as_str(), key.as_str())
                        .await
                        .ok()
                        .map(|s| s.meta.len),
                };
                match needed {
                    Some(needed) if needed > capacity => Err(ClientError::BufferTooSmall { needed, capacity }),
                    _ => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        (buf, result)
    }

    /// Copies a shard (or the range `request` names) that is not in the
    /// arena out of it while it loads: views of successive pieces are asked
    /// for several at once and each is answered as soon as its chunks are
    /// read and verified, so copying the first pieces overlaps reading the
    /// rest, and the bytes are copied once (the socket would copy them
    /// twice). `None`, with `dest` holding unspecified bytes, when the
    /// arena cannot place the shard now, when its version changed between
    /// pieces, or when it is too small for this to pay: the caller then
    /// reads it over the socket.
    async fn follow_load(
        &self,
        request: &FetchRequest,
        dest: &mut [u8],
        checksum: bool,
    ) -> Result<Option<FetchInfo>, ClientError> {
        let capacity = dest.len() as u64;
        let part = |offset: u64, len: u64| FetchRequest {
            range: Some(ByteRange { offset, len }),
            ..request.clone()
        };
        // The first request starts the load and is the one the daemon
        // counts as the fetch's miss: the first piece of a range, or for a
        // whole shard an empty view that tells its length.
        let first = match request.range {
            Some(range) if range.len >= FOLLOW_MIN && range.len <= capacity => {
                part(range.offset, FOLLOW_PIECE.min(range.len))
            }
            None if capacity >= FOLLOW_MIN => part(0, 0),
            _ => return Ok(None),
        };
        let first = match self.view(first, View::Load).await {
            Ok(first) => first,
            Err(e) if view_unavailable(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = first.meta().clone();
        let (start, len) = match request.range {
            Some(range) => (range.offset, range.len),
            None if meta.len <= capacity => (0, meta.len),
            None => return Ok(None),
        };
        let mut crc = first.copy_appending(dest, checksum.then_some(0))?;
        let mut at = first.len();
        drop(first);
        let rest = (at..len).step_by(FOLLOW_PIECE as usize).map(|at| {
            let piece = part(start + at, FOLLOW_PIECE.min(len - at));
            self.view(piece, View::Continue)
        });
        let mut answers = futures_util::stream::iter(rest).buffered(FOLLOW_AHEAD);
        let mut outcome = Ok(true);
        // Every answer is awaited, even after a failure, so that no lease
        // is left unclaimed in the daemon.
        while let Some(answer) = answers.next().await {
            if !matches!(outcome, Ok(true)) {
                continue;
            }
            let copied = answer.and_then(|view| {
                if view.meta().version != meta.version {
                    return Ok(None);
                }
                let next = view.copy_appending(&mut dest[at as usize..], crc)?;
                Ok(Some((next, view.len())))
            });
            outcome = match copied {
                Ok(Some((next, len))) => {
                    crc = next;
                    at += len;
                    Ok(true)
                }
                Ok(None) => Ok(false),
                Err(e) if view_unavailable(&e) => Ok(false),
                Err(e) => Err(e),
            };
        }
        if !outcome? {
            return Ok(None);
        }
        if request.range.is_none() {
            check_crc(&meta, crc)?;
        }
        Ok(Some(FetchInfo {
            meta,
            offset: start,
            len,
        }))
    }

    /// Metadata of a shard, and its state in the daemon's arena.
    pub async fn stat(&self, namespace: &str, key: &str) -> Result<StatResponse, ClientError> {
        let (namespace, key) = names(namespace, key)?;
        self.call(Opcode::Stat, Some(&StatRequest { namespace, key })).await
    }

    /// Whether fetches read in place from the daemon's mapped arena.
    pub fn zero_copy(&self) -> bool {
        self.arena.is_some()
    }

    /// Why the arena the daemon offered was not mapped (it was not the
    /// sealed memory file of the size announced, or could not be mapped);
    /// fetches then copy over the socket. `None` if it was mapped, or not
    /// offered.
    pub fn zero_copy_refused(&self) -> Option<&str> {
        self.arena_refused.as_deref()
    }

    /// A zero-copy view of a shard (or `range` of it) in the daemon's arena.
    /// Needs a Unix-socket connection with the arena mapped; the daemon
    /// answers `busy` when its arena cannot hold the shard now.
    pub async fn fetch_view(
        &self,
        namespace: &str,
        key: &str,
        range: Option<ByteRange>,
    ) -> Result<ShardView, ClientError> {
        let (namespace, key) = names(namespace, key)?;
        let request = FetchRequest {
            namespace,
            key,
            range,
            max_len: None,
        };
        self.view(request, View::Load).await
    }

    /// A view of `request`, asked for as `how` says.
    async fn view(&self, request: FetchRequest, how: View) -> Result<ShardView, ClientError> {
        let Some(arena) = &self.arena else {
            return Err(ClientError::ZeroCopyUnavailable);
        };
        let request = ViewRequest {
            fetch: request,
            release: self.conn.take_releases(),
            if_resident: how == View::IfResident,
            continued: how == View::Continue,
        };
        // The lease runs from when it was asked for (the daemon's clock starts
        // later, when it grants it).
        let asked = std::time::Instant::now();
        let answer: ViewResponse = self.call(Opcode::FetchView, Some(&request)).await?;
        let lease = answer.lease;
        ShardView::new(
            asked,
            answer.meta,
            answer.offset,
            answer.len,
            answer.extents,
            lease,
            arena.clone(),
            self.conn.clone(),
        )
        .ok_or_else(|| ClientError::Remote {
            status: Status::Internal,
            message: format!("the daemon described a view outside its arena (lease {lease})"),
            current_version: None,
        })
    }

    /// Asks the daemon to check its copy in memory of a shard (of
    /// `version`, if given) against the shard's CRC32C again. A copy that
    /// fails is dropped and never served again: the next fetch reads the
    /// drive (a write-back shard not on the drive yet is lost). Fetches
    /// call it themselves when a whole shard they read does not match.
    pub async fn verify(
        &self,
        namespace: &str,
        key: &str,
        version: Option<u64>,
    ) -> Result<VerifyResponse, ClientError> {
        let (namespace, key) = names(namespace, key)?;
        let request = VerifyRequest {
            namespace,
            key,
            version,
        };
        self.call(Opcode::Verify, Some(&request)).await
    }

    /// Reports a whole-shard read that did not match the shard's checksum,
    /// so that the daemon checks (and drops) its copy in memory before the
    /// read is made again.
    async fn report_mismatch(&self, namespace: &Namespace, key: &Key, version: u64) {
        let shard = format!("{namespace}/{key}");
        match self.verify(namespace.as_str(), key.as_str(), Some(version)).await {
            Ok(answer) => tracing::warn!(
                %shard, version, outcome = ?answer.outcome,
                "a fetch did not match the shard's checksum; the daemon checked its copy in memory; fetching again"
            ),
            Err(e) => tracing::warn!(
                %shard, version, error = %e,
                "a fetch did not match the shard's checksum and the daemon could not check its copy; fetching again"
            ),
        }
    }

    /// Hints that shards will be needed soon: the daemon loads them into its
    /// arena in the background, most urgent first.
    pub async fn prefetch(&self, namespace: &str, items: Vec<PrefetchItem>) -> Result<PrefetchResponse, ClientError> {
        let request = PrefetchRequest {
            namespace: Namespace::new(namespace)?,
            items,
        };
        self.call(Opcode::Prefetch, Some(&request)).await
    }

    /// Frees the arena copies of shards (`Demote`, the drive keeps them) or
    /// deletes the shards (`Drop`).
    pub async fn evict(&self, namespace: &str, keys: &[&str], mode: EvictMode) -> Result<EvictResponse, ClientError> {
        let request = EvictRequest {
            namespace: Namespace::new(namespace)?,
            keys: keys.iter().map(|k| Key::new(*k)).collect::<Result<_, _>>()?,
            mode,
        };
        // Views already dropped must not keep these shards busy.
        self.conn.flush_releases();
        self.call(Opcode::Evict, Some(&request)).await
    }

    /// Registers the order in which a training step uses shards (repeated
    /// every step); the daemon's schedule policy then evicts the shard used
    /// furthest in the future. An empty order removes it.
    pub async fn set_schedule(&self, namespace: &str, keys: &[&str]) -> Result<(), ClientError> {
        let request = ScheduleRequest {
            namespace: Namespace::new(namespace)?,
            keys: keys.iter().map(|k| Key::new(*k)).collect::<Result<_, _>>()?,
        };
        let _: ScheduleResponse = self.call(Opcode::Schedule, Some(&request)).await?;
        Ok(())
    }

    /// One page of the shards of `namespace` whose keys start with `prefix`,
    /// after `start_after`, at most `limit` (capped at the protocol's maximum).
    pub async fn list_page(
        &self,
        namespace: &str,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> Result<ListResponse, ClientError> {
        let request = ListRequest {
            namespace: Namespace::new(namespace)?,
            prefix: prefix.to_string(),
            start_after: start_after.map(str::to_string),
            limit,
        };
        self.call(Opcode::List, Some(&request)).await
    }

    /// Every shard of `namespace` whose key starts with `prefix`, in key order.
    pub async fn list(&self, namespace: &str, prefix: &str) -> Result<Vec<ShardMeta>, ClientError> {
        let mut out: Vec<ShardMeta> = Vec::new();
        loop {
            let after = out.last().map(|m| m.key.to_string());
            let page = self
                .list_page(namespace, prefix, after.as_deref(), MAX_LIST_LIMIT)
                .await?;
            if page.more && page.shards.is_empty() {
                return Err(ClientError::Remote {
                    status: shardd_protocol::Status::Internal,
                    message: "the daemon announced more entries but sent none".into(),
                    current_version: None,
                });
            }
            out.extend(page.shards);
            if !page.more {
                return Ok(out);
            }
        }
    }

    /// Removes a shard (only if `version` is the stored one, when given);
    /// returns the version removed.
    pub async fn delete(&self, namespace: &str, key: &str, version: Option<u64>) -> Result<u64, ClientError> {
        let (namespace, key) = names(namespace, key)?;
        let request = DeleteRequest {
            namespace,
            key,
            version,
        };
        let response: DeleteResponse = self.call(Opcode::Delete, Some(&request)).await?;
        Ok(response.version)
    }

    /// The namespaces the daemon holds whose names start with `prefix`
    /// (those this client may read), with what each holds on the drives
    /// and in the arena.
    pub async fn namespaces(&self, prefix: &str) -> Result<Vec<NamespaceUsage>, ClientError> {
        let request = NamespacesRequest { prefix: prefix.into() };
        let response: NamespacesResponse = self.call(Opcode::Namespaces, Some(&request)).await?;
        Ok(response.namespaces)
    }

    /// Removes every shard of `namespace`, on the drives and in the arena
    /// (write-back shards not yet written are discarded); durable when it
    /// returns. Needs the `admin` right on it.
    pub async fn drop_namespace(&self, namespace: &str) -> Result<DropNamespaceResponse, ClientError> {
        let request = DropNamespaceRequest {
            namespace: Namespace::new(namespace)?,
        };
        self.call(Opcode::DropNamespace, Some(&request)).await
    }

    /// Sets the quotas of `namespace` (bytes on the drives, bytes of the
    /// arena; `None` clears one, falling back to the daemon's configured
    /// quota). Kept by the daemon across restarts. Needs the `admin` right
    /// on it. Returns the quotas in force afterwards.
    pub async fn set_quota(
        &self,
        namespace: &str,
        max_drive_bytes: Option<u64>,
        max_arena_bytes: Option<u64>,
    ) -> Result<SetQuotaResponse, ClientError> {
        let request = SetQuotaRequest {
            namespace: Namespace::new(namespace)?,
            max_drive_bytes,
            max_arena_bytes,
        };
        self.call(Opcode::SetQuota, Some(&request)).await
    }

    /// The daemon's state.
    pub async fn status(&self) -> Result<StatusResponse, ClientError> {
        self.call::<(), StatusResponse>(Opcode::Status, None).await
    }
}

/// Whether a zero-copy fetch failed only because the daemon's arena cannot
/// hold the shard (now or ever): the bytes can still come over the socket.
fn view_unavailable(e: &ClientError) -> bool {
    matches!(e.status(), Some(Status::Busy) | Some(Status::TooLarge))
}

/// Checks a whole-shard checksum computed while copying.
fn check_crc(meta: &ShardMeta, actual: Option<u32>) -> Result<(), ClientError> {
    match actual {
        Some(actual) if actual != meta.crc32c => Err(ClientError::ChecksumMismatch {
            shard: format!("{}/{}", meta.namespace, meta.key),
            version: meta.version,
            expected: meta.crc32c,
            actual,
        }),
        _ => Ok(()),
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, ClientError> {
    codec::encode(value).map_err(|e| ClientError::InvalidEndpoint {
        endpoint: String::new(),
        reason: e.to_string(),
    })
}

fn decode<T: DeserializeOwned>(conn: &Connection, bytes: &[u8]) -> Result<T, ClientError> {
    codec::decode(bytes).map_err(|source| ClientError::Protocol {
        endpoint: conn.endpoint().to_string(),
        source,
    })
}
