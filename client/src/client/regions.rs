//! Fetches into registered regions: the daemon (Unix) or the connection's
//! receiver (TCP) writes each shard's bytes at its place.

use std::ops::Range;
use std::os::fd::AsFd;
use std::sync::Arc;

use bytes::Bytes;
use shardd_protocol::{
    FetchBatchRequest, FetchPreparedRequest, FetchResponse, Key, Namespace, Opcode, PrepareFetchResponse, PutMember,
    RegionPlace, RegisterRegionRequest, RegisterRegionResponse, ReleasePreparedRequest, ReleaseRegionRequest,
    ShardMeta,
};

use super::batch::{BatchResult, PutItem, Wanted, check_count, check_places};
use super::{Client, FetchInfo, decode, encode};
use crate::ClientError;
use crate::connection::{Answer, Connection, Member, Place};
use crate::region::{Region, RegionBuf, RegionBytes};

/// A region registered on a connection: fetches on that connection (and
/// its clones) may name it as their destination. Dropping it releases the
/// registration; the connection's end releases them all.
#[derive(Debug)]
pub struct RegisteredRegion {
    region: Region,
    id: u32,
    mapped: bool,
    conn: Arc<Connection>,
}

impl RegisteredRegion {
    /// The region's memory.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Its id on the connection.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Whether the daemon writes into it itself (Unix socket); else the
    /// bytes come over the socket and the client writes them.
    pub fn placed_by_daemon(&self) -> bool {
        self.mapped
    }
}

impl Drop for RegisteredRegion {
    fn drop(&mut self) {
        if self.conn.is_closed() {
            return;
        }
        if let Ok(control) = encode(&ReleaseRegionRequest { region: self.id }) {
            self.conn.send_and_forget(Opcode::ReleaseRegion, control);
        }
    }
}

impl RegisteredRegion {
    /// Checks that the region is registered on `client`'s connection.
    fn check_connection(&self, client: &Client) -> Result<(), ClientError> {
        if Arc::ptr_eq(&self.conn, &client.conn) {
            return Ok(());
        }
        Err(ClientError::InvalidBatch {
            reason: format!(
                "region {} is registered on another connection: register it on this one",
                self.id
            ),
        })
    }
}

impl Client {
    /// Stores many shards in one request, each from its range of `region`.
    /// Over a Unix socket the daemon reads the bytes from the region itself
    /// (nothing crosses the socket); over TCP they are sent from it, with
    /// no copy. The ranges must not change until this returns.
    pub async fn put_from_region(
        &self,
        region: &RegisteredRegion,
        items: &[(PutItem, Range<usize>)],
    ) -> BatchResult<ShardMeta> {
        region.check_connection(self)?;
        check_count(items.len())?;
        for (_, range) in items {
            if range.start > range.end || range.end > region.region.len() {
                return Err(ClientError::InvalidBatch {
                    reason: format!(
                        "source {range:?} is not within the region of {} bytes",
                        region.region.len()
                    ),
                });
            }
        }
        if !region.mapped {
            // Over TCP the bytes travel in the request's payload.
            let total: u64 = items.iter().map(|(_, range)| range.len() as u64).sum();
            let max = self.server.limits.max_payload_len;
            if total > max {
                return Err(ClientError::InvalidBatch {
                    reason: format!(
                        "the puts hold {total} bytes, more than the {max} one request may carry: split the batch"
                    ),
                });
            }
        }
        let mut members = Vec::with_capacity(items.len());
        let mut payload = Vec::new();
        for (item, range) in items {
            members.push(PutMember {
                put: item.request(None)?,
                len: range.len() as u64,
                source: Some(RegionPlace {
                    region: region.id,
                    offset: range.start as u64,
                    len: range.len() as u64,
                }),
            });
            if !region.mapped {
                payload.push(Bytes::from_owner(RegionBytes::new(
                    region.region.clone(),
                    range.clone(),
                )));
            }
        }
        self.put_members(members, payload).await
    }

    /// Registers `region` on this connection. Over a Unix socket the daemon
    /// maps the region's memory and writes fetched bytes into it itself;
    /// over TCP they come over the socket and this client writes them.
    pub async fn register_region(&self, region: &Region) -> Result<RegisteredRegion, ClientError> {
        let control = encode(&RegisterRegionRequest {
            len: region.len() as u64,
        })?;
        let timeout = self.options.request_timeout;
        let reply = if self.endpoint().starts_with("unix://") {
            let fd = region
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| ClientError::InvalidBatch {
                    reason: format!("cannot pass the region's memory file: {e}"),
                })?;
            self.conn
                .call_with_fd(Opcode::RegisterRegion, control, fd, timeout)
                .await?
        } else {
            self.conn.call(Opcode::RegisterRegion, control, None, timeout).await?
        };
        let answer: RegisterRegionResponse = decode(&self.conn, &reply.control)?;
        Ok(RegisteredRegion {
            region: region.clone(),
            id: answer.region,
            mapped: answer.mapped,
            conn: self.conn.clone(),
        })
    }

    /// Fetches many shards (or ranges) in one request into `region`: each
    /// member's bytes go to its own range of the region, from the range's
    /// start (ranges must lie in the region and must not overlap). Over a
    /// Unix socket the daemon writes them there itself (an arena hit is one
    /// copy by the daemon, and no bytes cross the socket); over TCP the
    /// receiver writes each payload there as it arrives. A member larger
    /// than its range fails with `too large`.
    pub async fn fetch_into_region(
        &self,
        region: &RegisteredRegion,
        wanted: &[(Wanted, Range<usize>)],
    ) -> BatchResult<FetchInfo> {
        let plan = self.plan_into_region(region, wanted)?;
        let control = encode(&plan.request)?;
        let op = Opcode::FetchBatch;
        let answers = self.run_into_region(op, control, &plan).await?;
        // The names go to the answers: this plan is not kept.
        let names = plan.request.members.into_iter().map(|m| (m.namespace, m.key));
        Ok(named(op, answers, names))
    }

    /// Keeps a fetch of `wanted` into `region` on the daemon, to run again
    /// with [`Client::fetch_prepared`] as often as wanted: a trainer
    /// gathering the same layer every step sends its keys and places once,
    /// and each step's request is a few bytes that the daemon answers
    /// without decoding a name. Each run fetches the shards as they are
    /// then (a shard replaced in between comes new). The batch is released
    /// when the returned value is dropped, and ends with its connection.
    pub async fn prepare_fetch_into_region(
        &self,
        region: &RegisteredRegion,
        wanted: &[(Wanted, Range<usize>)],
    ) -> Result<PreparedFetch, ClientError> {
        let plan = self.plan_into_region(region, wanted)?;
        let control = encode(&plan.request)?;
        let reply = self
            .conn
            .call(Opcode::PrepareFetch, control, None, self.options.request_timeout)
            .await?;
        let answer: PrepareFetchResponse = decode(&self.conn, &reply.control)?;
        Ok(PreparedFetch {
            id: answer.batch,
            plan,
            conn: self.conn.clone(),
        })
    }

    /// Runs a fetch kept by [`Client::prepare_fetch_into_region`]: each
    /// member into its place, answered as `fetch_into_region` is.
    pub async fn fetch_prepared(&self, prepared: &PreparedFetch) -> BatchResult<FetchInfo> {
        if !Arc::ptr_eq(&prepared.conn, &self.conn) {
            return Err(ClientError::InvalidBatch {
                reason: format!(
                    "batch {} is prepared on another connection: prepare it on this one",
                    prepared.id
                ),
            });
        }
        let control = encode(&FetchPreparedRequest { batch: prepared.id })?;
        let op = Opcode::FetchPrepared;
        let answers = self.run_into_region(op, control, &prepared.plan).await?;
        let names = prepared.plan.request.members.iter();
        Ok(named(op, answers, names.map(|m| (m.namespace.clone(), m.key.clone()))))
    }

    /// What a fetch into `region` asks for, and where each member goes.
    fn plan_into_region(
        &self,
        region: &RegisteredRegion,
        wanted: &[(Wanted, Range<usize>)],
    ) -> Result<RegionPlan, ClientError> {
        region.check_connection(self)?;
        check_count(wanted.len())?;
        check_places(wanted.iter().map(|(_, r)| r), region.region.len())?;
        let verify = self.options.verify_checksums;
        let mut requests = Vec::with_capacity(wanted.len());
        let mut places = Vec::with_capacity(wanted.len());
        let mut members = Vec::with_capacity(wanted.len());
        for (w, range) in wanted {
            requests.push(w.request(None)?);
            places.push(RegionPlace {
                region: region.id,
                offset: range.start as u64,
                len: range.len() as u64,
            });
            members.push(match region.mapped {
                true => (None, false),
                false => (Some(range.clone()), verify && w.range.is_none()),
            });
        }
        Ok(RegionPlan {
            request: FetchBatchRequest {
                members: requests,
                places,
            },
            members,
            region: (!region.mapped).then(|| region.region.clone()),
        })
    }

    /// Sends `op` with `control` for the fetch `plan` describes; each
    /// member's answer.
    async fn run_into_region(
        &self,
        op: Opcode,
        control: Vec<u8>,
        plan: &RegionPlan,
    ) -> Result<Vec<Result<Answer, ClientError>>, ClientError> {
        let members = plan
            .members
            .iter()
            .map(|(range, verify)| match range {
                None => Member::new(Place::Daemon, false),
                Some(range) => Member::new(
                    Place::In {
                        at: range.start,
                        len: range.len(),
                    },
                    *verify,
                ),
            })
            .collect();
        let buf = plan
            .region
            .as_ref()
            .map(|region| Box::new(RegionBuf(region.clone())) as _);
        let done = self
            .conn
            .batch(op, control, members, buf, self.options.request_timeout)
            .await;
        done.result
    }
}

/// Each member's answer to a fetch into a region, as what was fetched: a
/// member the daemon placed is answered without the names the request gave,
/// which `names` brings back.
fn named(
    op: Opcode,
    answers: Vec<Result<Answer, ClientError>>,
    names: impl Iterator<Item = (Namespace, Key)>,
) -> Vec<Result<FetchInfo, ClientError>> {
    let info = |head: FetchResponse| FetchInfo {
        meta: head.meta,
        offset: head.offset,
        len: head.len,
    };
    answers
        .into_iter()
        .zip(names)
        .map(|(answer, (namespace, key))| match answer? {
            Answer::Placed(head) => Ok(info(head.named(namespace, key))),
            Answer::Fetch(head, _) => Ok(info(head)),
            _ => Err(super::batch::unexpected(op.name())),
        })
        .collect()
}

/// A fetch into a region: the request, and for each member its range of
/// the region when the client places the bytes (TCP) and whether they are
/// checked as they come.
#[derive(Debug)]
struct RegionPlan {
    request: FetchBatchRequest,
    members: Vec<(Option<Range<usize>>, bool)>,
    /// The region, when the client places the bytes.
    region: Option<Region>,
}

/// A fetch batch the daemon keeps on this connection
/// ([`Client::prepare_fetch_into_region`]); released when dropped.
#[derive(Debug)]
pub struct PreparedFetch {
    id: u32,
    plan: RegionPlan,
    conn: Arc<Connection>,
}

impl PreparedFetch {
    /// The batch's id on its connection.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Its members.
    pub fn len(&self) -> usize {
        self.plan.members.len()
    }

    /// Whether it has none (never: a batch needs one).
    pub fn is_empty(&self) -> bool {
        self.plan.members.is_empty()
    }
}

impl Drop for PreparedFetch {
    fn drop(&mut self) {
        if self.conn.is_closed() {
            return;
        }
        if let Ok(control) = encode(&ReleasePreparedRequest { batch: self.id }) {
            self.conn.send_and_forget(Opcode::ReleasePrepared, control);
        }
    }
}
