//! Batched requests: many shards in one request, each member answered on
//! its own (one missing shard does not fail the others).

use std::ops::Range;

use bytes::Bytes;
use shardd_protocol::{
    ByteRange, FetchBatchRequest, FetchRequest, MAX_BATCH_MEMBERS, Opcode, PutBatchRequest, PutMember, PutRequest,
    ShardMeta, StatBatchRequest, StatRequest, StatResponse, Status, ViewBatchRequest,
};

use super::{Client, FetchInfo, PutOptions, Shard, check_crc, encode, names, view_unavailable};
use crate::connection::{Answer, BatchDone, FetchBuf, Member, Place};
use crate::{ClientError, ShardView};

/// A shard, or a range of it, that a batched request names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// Namespace.
    pub namespace: String,
    /// Key.
    pub key: String,
    /// Part to read; `None` for the whole shard.
    pub range: Option<ByteRange>,
}

impl Wanted {
    /// The whole shard `namespace`/`key`.
    pub fn new(namespace: impl Into<String>, key: impl Into<String>) -> Wanted {
        Wanted {
            namespace: namespace.into(),
            key: key.into(),
            range: None,
        }
    }

    /// Only `range` of it.
    pub fn range(mut self, range: ByteRange) -> Wanted {
        self.range = Some(range);
        self
    }

    pub(super) fn request(&self, max_len: Option<u64>) -> Result<FetchRequest, ClientError> {
        let (namespace, key) = names(&self.namespace, &self.key)?;
        Ok(FetchRequest {
            namespace,
            key,
            range: self.range,
            max_len,
        })
    }
}

/// One put of a batch.
#[derive(Clone, Debug)]
pub struct PutItem {
    /// Namespace.
    pub namespace: String,
    /// Key.
    pub key: String,
    /// How to store it.
    pub options: PutOptions,
}

impl PutItem {
    /// `namespace`/`key`, stored with default options.
    pub fn new(namespace: impl Into<String>, key: impl Into<String>) -> PutItem {
        PutItem {
            namespace: namespace.into(),
            key: key.into(),
            options: PutOptions::default(),
        }
    }

    /// Stored as `options` say.
    pub fn options(mut self, options: PutOptions) -> PutItem {
        self.options = options;
        self
    }

    /// The request for bytes whose CRC32C is `crc32c`, if known.
    pub(super) fn request(&self, crc32c: Option<u32>) -> Result<PutRequest, ClientError> {
        let (namespace, key) = names(&self.namespace, &self.key)?;
        let options = self.options.clone();
        Ok(PutRequest {
            namespace,
            key,
            version: options.version,
            dtype: options.dtype,
            shape: options.shape,
            crc32c,
            durability: options.durability,
        })
    }
}

/// Each member's outcome, in the order they were asked for; the outer
/// error is for the batch as a whole (the connection broke, the daemon
/// refused the request).
pub type BatchResult<T> = Result<Vec<Result<T, ClientError>>, ClientError>;

pub(super) fn check_count(count: usize) -> Result<(), ClientError> {
    if count == 0 || count > MAX_BATCH_MEMBERS {
        return Err(ClientError::InvalidBatch {
            reason: format!("a batch has 1 to {MAX_BATCH_MEMBERS} members, not {count}"),
        });
    }
    Ok(())
}

/// Checks that every destination lies in a buffer of `capacity` bytes and
/// that no two overlap.
pub(super) fn check_places<'r>(
    places: impl Iterator<Item = &'r Range<usize>>,
    capacity: usize,
) -> Result<(), ClientError> {
    let mut sorted: Vec<&Range<usize>> = places.collect();
    sorted.sort_by_key(|r| r.start);
    let mut end = 0;
    for range in sorted {
        if range.start > range.end || range.end > capacity {
            return Err(ClientError::InvalidBatch {
                reason: format!("destination {range:?} is not within the buffer of {capacity} bytes"),
            });
        }
        if range.start < end && !range.is_empty() {
            return Err(ClientError::InvalidBatch {
                reason: format!("destination {range:?} overlaps another one"),
            });
        }
        end = end.max(range.end);
    }
    Ok(())
}

impl Client {
    /// Fetches many shards (or ranges) in one request, each into a vector
    /// of its own, over the socket.
    pub async fn fetch_many(&self, wanted: &[Wanted]) -> BatchResult<Shard> {
        check_count(wanted.len())?;
        let verify = self.options.verify_checksums;
        let mut requests = Vec::with_capacity(wanted.len());
        let mut members = Vec::with_capacity(wanted.len());
        for w in wanted {
            requests.push(w.request(None)?);
            members.push(Member::new(Place::Alloc(None), verify && w.range.is_none()));
        }
        let control = encode(&FetchBatchRequest {
            members: requests,
            places: Vec::new(),
        })?;
        let BatchDone { result, .. } = self
            .conn
            .batch(Opcode::FetchBatch, control, members, None, self.options.request_timeout)
            .await;
        Ok(result?
            .into_iter()
            .map(|answer| match answer? {
                Answer::Fetch(head, data) => Ok(Shard {
                    meta: head.meta,
                    offset: head.offset,
                    data: data.unwrap_or_default(),
                }),
                _ => Err(unexpected("fetch_batch")),
            })
            .collect())
    }

    /// Fetches many shards (or ranges) in one request straight into the
    /// caller's buffer: each member's bytes go to its own range of `buf`,
    /// from the range's start (ranges must lie in `buf` and must not
    /// overlap); a member larger than its range fails with
    /// `BufferTooSmall`. The buffer comes back in every case.
    ///
    /// With the daemon's arena mapped (Unix socket), members the arena
    /// holds or can load are copied once, from the arena, out of views
    /// asked for in one request; the rest come over the socket in another.
    /// Whole shards that do not match their checksum are reported to the
    /// daemon and fetched once more, as [`Client::fetch_into`] does.
    pub async fn fetch_many_into<B: FetchBuf>(
        &self,
        wanted: &[(Wanted, Range<usize>)],
        buf: B,
    ) -> (B, BatchResult<FetchInfo>) {
        let (buf, result) = self.fetch_many_into_once(wanted, buf).await;
        let Ok(mut results) = result else {
            return (buf, result);
        };
        let bad = self.report_mismatches(wanted.iter().map(|(w, _)| w), &results).await;
        if bad.is_empty() {
            return (buf, Ok(results));
        }
        let again: Vec<(Wanted, Range<usize>)> = bad.iter().map(|&i| wanted[i].clone()).collect();
        let (buf, fetched) = self.fetch_many_into_once(&again, buf).await;
        merge_again(&mut results, &bad, fetched);
        (buf, Ok(results))
    }

    /// Reports to the daemon every member that did not match its checksum;
    /// their indices.
    async fn report_mismatches<'w>(
        &self,
        wanted: impl Iterator<Item = &'w Wanted>,
        results: &[Result<FetchInfo, ClientError>],
    ) -> Vec<usize> {
        let mut bad = Vec::new();
        for (i, (w, result)) in wanted.zip(results).enumerate() {
            if let Err(ClientError::ChecksumMismatch { version, .. }) = result
                && let Ok((namespace, key)) = names(&w.namespace, &w.key)
            {
                self.report_mismatch(&namespace, &key, *version).await;
                bad.push(i);
            }
        }
        bad
    }

    async fn fetch_many_into_once<B: FetchBuf>(
        &self,
        wanted: &[(Wanted, Range<usize>)],
        mut buf: B,
    ) -> (B, BatchResult<FetchInfo>) {
        let capacity = buf.as_mut().len();
        let checked = check_count(wanted.len()).and_then(|()| check_places(wanted.iter().map(|(_, r)| r), capacity));
        if let Err(e) = checked {
            return (buf, Err(e));
        }
        let mut results: Vec<Option<Result<FetchInfo, ClientError>>> = (0..wanted.len()).map(|_| None).collect();
        if self.arena.is_some() {
            let views = match self.view_members(wanted.iter().map(|(w, _)| w), false).await {
                Ok(views) => views,
                Err(e) => return (buf, Err(e)),
            };
            let verify = self.options.verify_checksums && self.options.verify_views;
            for (i, view) in views.into_iter().enumerate() {
                let (w, place) = &wanted[i];
                results[i] = match view {
                    Ok(view) => {
                        let dest = &mut buf.as_mut()[place.clone()];
                        Some(copy_view(&view, dest, verify && w.range.is_none()))
                    }
                    Err(e) if view_unavailable(&e) => None,
                    Err(e) => Some(Err(e)),
                };
            }
        }
        // What the arena did not give comes over the socket.
        let rest: Vec<usize> = (0..wanted.len()).filter(|&i| results[i].is_none()).collect();
        if !rest.is_empty() {
            let (back, fetched) = self.fetch_members_into(wanted, &rest, buf).await;
            buf = back;
            match fetched {
                Ok(fetched) => {
                    for (i, result) in rest.into_iter().zip(fetched) {
                        results[i] = Some(result);
                    }
                }
                Err(e) => return (buf, Err(e)),
            }
        }
        let results = results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(unexpected("fetch_batch"))));
        (buf, Ok(results.collect()))
    }

    /// Fetches many shards (or ranges) in one request, each into a buffer
    /// of its own (from its start), as [`Client::fetch_many_into`] does into
    /// ranges of one buffer. The buffers come back in every case, in order.
    pub async fn fetch_many_into_each<B: FetchBuf>(
        &self,
        wanted: &[Wanted],
        bufs: Vec<B>,
    ) -> (Vec<B>, BatchResult<FetchInfo>) {
        let (bufs, result) = self.fetch_each_once(wanted, bufs).await;
        let Ok(mut results) = result else {
            return (bufs, result);
        };
        let bad = self.report_mismatches(wanted.iter(), &results).await;
        if bad.is_empty() {
            return (bufs, Ok(results));
        }
        let mut slots: Vec<Option<B>> = bufs.into_iter().map(Some).collect();
        let again: Vec<Wanted> = bad.iter().map(|&i| wanted[i].clone()).collect();
        let again_bufs: Vec<B> = bad.iter().filter_map(|&i| slots[i].take()).collect();
        let (back, fetched) = self.fetch_each_once(&again, again_bufs).await;
        for (&i, buf) in bad.iter().zip(back) {
            slots[i] = Some(buf);
        }
        merge_again(&mut results, &bad, fetched);
        (slots.into_iter().flatten().collect(), Ok(results))
    }

    async fn fetch_each_once<B: FetchBuf>(
        &self,
        wanted: &[Wanted],
        mut bufs: Vec<B>,
    ) -> (Vec<B>, BatchResult<FetchInfo>) {
        if let Err(e) = check_count(wanted.len()) {
            return (bufs, Err(e));
        }
        if bufs.len() != wanted.len() {
            let reason = format!(
                "{} members and {} buffers: one buffer per member",
                wanted.len(),
                bufs.len()
            );
            return (bufs, Err(ClientError::InvalidBatch { reason }));
        }
        let mut results: Vec<Option<Result<FetchInfo, ClientError>>> = (0..wanted.len()).map(|_| None).collect();
        if self.arena.is_some() {
            let views = match self.view_members(wanted.iter(), false).await {
                Ok(views) => views,
                Err(e) => return (bufs, Err(e)),
            };
            let verify = self.options.verify_checksums && self.options.verify_views;
            for (i, view) in views.into_iter().enumerate() {
                results[i] = match view {
                    Ok(view) => Some(copy_view(&view, bufs[i].as_mut(), verify && wanted[i].range.is_none())),
                    Err(e) if view_unavailable(&e) => None,
                    Err(e) => Some(Err(e)),
                };
            }
        }
        let rest: Vec<usize> = (0..wanted.len()).filter(|&i| results[i].is_none()).collect();
        if rest.is_empty() {
            let results = results
                .into_iter()
                .map(|r| r.unwrap_or_else(|| Err(unexpected("fetch_batch"))));
            return (bufs, Ok(results.collect()));
        }
        // What the arena did not give comes over the socket, each member
        // into its own buffer.
        let verify = self.options.verify_checksums;
        let sized: Vec<(Wanted, Range<usize>)> = wanted
            .iter()
            .zip(bufs.iter_mut())
            .map(|(w, b)| (w.clone(), 0..b.as_mut().len()))
            .collect();
        let mut slots: Vec<Option<B>> = bufs.into_iter().map(Some).collect();
        let mut requests = Vec::with_capacity(rest.len());
        let mut members = Vec::with_capacity(rest.len());
        for &i in &rest {
            let Some(mut buf) = slots[i].take() else {
                unreachable!("each buffer is taken once")
            };
            let capacity = buf.as_mut().len() as u64;
            let request = wanted[i].request(Some(capacity));
            let place = Place::Own(Box::new(buf));
            members.push(Member::new(place, verify && wanted[i].range.is_none()));
            match request {
                Ok(request) => requests.push(request),
                Err(e) => {
                    // Hand every buffer back before saying why.
                    let own = members.into_iter().map(Member::into_own);
                    for (&i, buf) in rest.iter().zip(own) {
                        slots[i] = buf.and_then(|b| b.into_any().downcast::<B>().ok()).map(|b| *b);
                    }
                    return (slots.into_iter().flatten().collect(), Err(e));
                }
            }
        }
        let request = FetchBatchRequest {
            members: requests,
            places: Vec::new(),
        };
        let done = match encode(&request) {
            Ok(control) => {
                let timeout = self.options.request_timeout;
                self.conn
                    .batch(Opcode::FetchBatch, control, members, None, timeout)
                    .await
            }
            Err(e) => BatchDone::failed(members, e),
        };
        for (&i, buf) in rest.iter().zip(done.own) {
            slots[i] = buf.and_then(|b| b.into_any().downcast::<B>().ok()).map(|b| *b);
        }
        let bufs: Vec<B> = slots.into_iter().flatten().collect();
        if bufs.len() != wanted.len() {
            unreachable!("a batch always returns every member's buffer");
        }
        let answers = match done.result {
            Ok(answers) => answers,
            Err(e) => return (bufs, Err(e)),
        };
        let mut fetched: Vec<Result<FetchInfo, ClientError>> = answers
            .into_iter()
            .map(|answer| match answer? {
                Answer::Fetch(head, _) => Ok(FetchInfo {
                    meta: head.meta,
                    offset: head.offset,
                    len: head.len,
                }),
                _ => Err(unexpected("fetch_batch")),
            })
            .collect();
        self.say_too_small(&sized, &rest, &mut fetched).await;
        for (slot, &i) in fetched.iter_mut().zip(&rest) {
            results[i] = Some(std::mem::replace(slot, Err(unexpected("fetch_batch"))));
        }
        let results = results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(unexpected("fetch_batch"))));
        (bufs, Ok(results.collect()))
    }

    /// Members `which` of `wanted` over the socket, into their places.
    async fn fetch_members_into<B: FetchBuf>(
        &self,
        wanted: &[(Wanted, Range<usize>)],
        which: &[usize],
        buf: B,
    ) -> (B, BatchResult<FetchInfo>) {
        let verify = self.options.verify_checksums;
        let mut requests = Vec::with_capacity(which.len());
        let mut members = Vec::with_capacity(which.len());
        for &i in which {
            let (w, place) = &wanted[i];
            match w.request(Some(place.len() as u64)) {
                Ok(request) => requests.push(request),
                Err(e) => return (buf, Err(e)),
            }
            let place = Place::In {
                at: place.start,
                len: place.len(),
            };
            members.push(Member::new(place, verify && w.range.is_none()));
        }
        let request = FetchBatchRequest {
            members: requests,
            places: Vec::new(),
        };
        let control = match encode(&request) {
            Ok(control) => control,
            Err(e) => return (buf, Err(e)),
        };
        let timeout = self.options.request_timeout;
        let done = self
            .conn
            .batch(Opcode::FetchBatch, control, members, Some(Box::new(buf)), timeout)
            .await;
        let Some(buf) = done.buf.and_then(|b| b.into_any().downcast::<B>().ok()) else {
            unreachable!("a batch always returns the caller's buffer");
        };
        let answers = match done.result {
            Ok(answers) => answers,
            Err(e) => return (*buf, Err(e)),
        };
        let mut results: Vec<Result<FetchInfo, ClientError>> = answers
            .into_iter()
            .map(|answer| match answer {
                Ok(Answer::Fetch(head, _)) => Ok(FetchInfo {
                    meta: head.meta,
                    offset: head.offset,
                    len: head.len,
                }),
                Ok(_) => Err(unexpected("fetch_batch")),
                Err(e) => Err(e),
            })
            .collect();
        self.say_too_small(wanted, which, &mut results).await;
        (*buf, Ok(results))
    }

    /// Members the daemon would not send because their place in the buffer
    /// is too small fail with `BufferTooSmall` and the size they need (a
    /// whole shard's length is asked for, rarely, once for all of them).
    async fn say_too_small(
        &self,
        wanted: &[(Wanted, Range<usize>)],
        which: &[usize],
        results: &mut [Result<FetchInfo, ClientError>],
    ) {
        let too_large =
            |r: &Result<FetchInfo, ClientError>| matches!(r, Err(e) if e.status() == Some(Status::TooLarge));
        let mut whole = Vec::new();
        for (result, &i) in results.iter_mut().zip(which) {
            if !too_large(result) {
                continue;
            }
            let (w, place) = &wanted[i];
            match w.range {
                Some(range) if range.len > place.len() as u64 => {
                    *result = Err(ClientError::BufferTooSmall {
                        needed: range.len,
                        capacity: place.len() as u64,
                    })
                }
                Some(_) => {}
                None => whole.push(i),
            }
        }
        if whole.is_empty() {
            return;
        }
        let shards: Vec<(&str, &str)> = whole
            .iter()
            .map(|&i| (wanted[i].0.namespace.as_str(), wanted[i].0.key.as_str()))
            .collect();
        let Ok(stats) = self.stat_many(&shards).await else {
            return;
        };
        for (&i, stat) in whole.iter().zip(stats) {
            let capacity = wanted[i].1.len() as u64;
            let Some(slot) = which.iter().position(|&w| w == i) else {
                continue;
            };
            match stat {
                Ok(stat) if stat.meta.len > capacity => {
                    results[slot] = Err(ClientError::BufferTooSmall {
                        needed: stat.meta.len,
                        capacity,
                    });
                }
                _ => {}
            }
        }
    }

    /// Zero-copy views of many shards (or ranges) in one request; each is
    /// loaded into the arena first if it is not there (`busy` for one the
    /// arena cannot place now). Needs the arena mapped, as
    /// [`Client::fetch_view`].
    pub async fn view_many(&self, wanted: &[Wanted]) -> BatchResult<ShardView> {
        check_count(wanted.len())?;
        self.view_members(wanted.iter(), false).await
    }

    async fn view_members<'w>(
        &self,
        wanted: impl ExactSizeIterator<Item = &'w Wanted>,
        if_resident: bool,
    ) -> BatchResult<ShardView> {
        let Some(arena) = &self.arena else {
            return Err(ClientError::ZeroCopyUnavailable);
        };
        let mut requests = Vec::with_capacity(wanted.len());
        for w in wanted {
            requests.push(w.request(None)?);
        }
        let members = requests.iter().map(|_| Member::new(Place::None, false)).collect();
        let request = ViewBatchRequest {
            members: requests,
            release: self.conn.take_releases(),
            if_resident,
        };
        let control = encode(&request)?;
        // Leases run from when they were asked for.
        let asked = std::time::Instant::now();
        let BatchDone { result, .. } = self
            .conn
            .batch(Opcode::ViewBatch, control, members, None, self.options.request_timeout)
            .await;
        Ok(result?
            .into_iter()
            .map(|answer| match answer? {
                Answer::View(view) => {
                    let lease = view.lease;
                    let (meta, offset, len, extents) = (view.meta, view.offset, view.len, view.extents);
                    let conn = self.conn.clone();
                    ShardView::new(asked, meta, offset, len, extents, lease, arena.clone(), conn).ok_or_else(|| {
                        ClientError::Remote {
                            status: Status::Internal,
                            message: format!("the daemon described a view outside its arena (lease {lease})"),
                            current_version: None,
                        }
                    })
                }
                _ => Err(unexpected("view_batch")),
            })
            .collect())
    }

    /// Stores many shards in one request (their bytes one after another in
    /// its payload); each member is stored, or fails, on its own.
    pub async fn put_many(&self, items: &[(PutItem, Bytes)]) -> BatchResult<ShardMeta> {
        check_count(items.len())?;
        let total: u64 = items.iter().map(|(_, data)| data.len() as u64).sum();
        let max = self.server.limits.max_payload_len;
        if total > max {
            return Err(ClientError::InvalidBatch {
                reason: format!(
                    "the puts hold {total} bytes, more than the {max} one request may carry: split the batch"
                ),
            });
        }
        let mut members = Vec::with_capacity(items.len());
        for (item, data) in items {
            members.push(PutMember {
                put: item.request(Some(crc32c::crc32c(data)))?,
                len: data.len() as u64,
                source: None,
            });
        }
        let payload = items.iter().map(|(_, data)| data.clone()).collect();
        self.put_members(members, payload).await
    }

    /// Sends a batch of puts and collects what each stored.
    pub(super) async fn put_members(&self, members: Vec<PutMember>, payload: Vec<Bytes>) -> BatchResult<ShardMeta> {
        let answers = members.iter().map(|_| Member::new(Place::None, false)).collect();
        let control = encode(&PutBatchRequest { members })?;
        let timeout = self.options.request_timeout;
        let done = self
            .conn
            .batch_with_payload(Opcode::PutBatch, control, payload, answers, None, timeout)
            .await;
        Ok(done
            .result?
            .into_iter()
            .map(|answer| match answer? {
                Answer::Stored(meta) => Ok(meta),
                _ => Err(unexpected("put_batch")),
            })
            .collect())
    }

    /// Metadata of many shards in one request.
    pub async fn stat_many(&self, shards: &[(&str, &str)]) -> BatchResult<StatResponse> {
        check_count(shards.len())?;
        let mut requests = Vec::with_capacity(shards.len());
        for (namespace, key) in shards {
            let (namespace, key) = names(namespace, key)?;
            requests.push(StatRequest { namespace, key });
        }
        let members = requests.iter().map(|_| Member::new(Place::None, false)).collect();
        let control = encode(&StatBatchRequest { members: requests })?;
        let BatchDone { result, .. } = self
            .conn
            .batch(Opcode::StatBatch, control, members, None, self.options.request_timeout)
            .await;
        Ok(result?
            .into_iter()
            .map(|answer| match answer? {
                Answer::Stat(stat) => Ok(stat),
                _ => Err(unexpected("stat_batch")),
            })
            .collect())
    }
}

/// Puts the outcomes of members `bad`, fetched again, in their places (a
/// second try that failed as a whole leaves the first errors, but for the
/// first member, which gets the second error).
fn merge_again(results: &mut [Result<FetchInfo, ClientError>], bad: &[usize], again: BatchResult<FetchInfo>) {
    match again {
        Ok(again) => {
            for (&i, result) in bad.iter().zip(again) {
                results[i] = result;
            }
        }
        Err(e) => results[bad[0]] = Err(e),
    }
}

/// Copies a view to its place; checks a whole shard's checksum if asked.
fn copy_view(view: &ShardView, dest: &mut [u8], verify: bool) -> Result<FetchInfo, ClientError> {
    if (dest.len() as u64) < view.len() {
        return Err(ClientError::BufferTooSmall {
            needed: view.len(),
            capacity: dest.len() as u64,
        });
    }
    let crc = view.copy_to(dest, verify)?;
    check_crc(view.meta(), crc)?;
    Ok(FetchInfo {
        meta: view.meta().clone(),
        offset: view.offset(),
        len: view.len(),
    })
}

/// A member answered with the wrong kind of part: the daemon's bug.
pub(super) fn unexpected(op: &str) -> ClientError {
    ClientError::Remote {
        status: Status::Internal,
        message: format!("the daemon answered a {op} member with another kind of answer"),
        current_version: None,
    }
}
