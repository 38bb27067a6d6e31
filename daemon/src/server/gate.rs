//! The one place where a request is checked against the access table:
//! every control message is decoded by [`admit`], which refuses what the
//! peer may not do before anything reaches the [`crate::service`].

use serde::de::DeserializeOwned;
use shardd_protocol::{
    DeleteRequest, DropNamespaceRequest, EvictMode, EvictRequest, FetchBatchRequest, FetchPreparedRequest,
    FetchRequest, ListRequest, MAX_BATCH_MEMBERS, NamespacesRequest, PrefetchRequest, PutBatchRequest, PutMember,
    PutRequest, RegisterRegionRequest, ReleasePreparedRequest, ReleaseRegionRequest, ReleaseRequest, ScheduleRequest,
    SetQuotaRequest, StatBatchRequest, StatRequest, VerifyRequest, ViewBatchRequest, ViewRequest, codec,
};

use super::ServerContext;
use crate::access::{Need, Right};
use crate::service::Session;
use crate::service::prepared::PreparedFetch;
use crate::store::StoreError;

/// A request that says what it needs of the access table.
pub trait Guarded {
    /// The right it needs, and on which namespace.
    fn need(&self) -> Need<'_>;
}

macro_rules! needs {
    ($right:expr => $($request:ty),+) => {
        $(impl Guarded for $request {
            fn need(&self) -> Need<'_> {
                Need::On(&self.namespace, $right)
            }
        })+
    };
}

needs!(Right::Read => FetchRequest, StatRequest, ListRequest, PrefetchRequest, VerifyRequest);
needs!(Right::Write => PutRequest);
needs!(Right::Admin => DeleteRequest, ScheduleRequest, DropNamespaceRequest, SetQuotaRequest);

impl Guarded for NamespacesRequest {
    /// Each namespace listed is filtered by [`may_read`] instead.
    fn need(&self) -> Need<'_> {
        Need::Nothing
    }
}

impl Guarded for ViewRequest {
    fn need(&self) -> Need<'_> {
        self.fetch.need()
    }
}

impl Guarded for EvictRequest {
    fn need(&self) -> Need<'_> {
        match self.mode {
            EvictMode::Demote => Need::On(&self.namespace, Right::Read),
            EvictMode::Drop => Need::On(&self.namespace, Right::Admin),
        }
    }
}

impl Guarded for RegisterRegionRequest {
    /// A region is the client's own memory: it names no namespace (each
    /// fetch into it is checked as a fetch).
    fn need(&self) -> Need<'_> {
        Need::Nothing
    }
}

impl Guarded for ReleaseRegionRequest {
    fn need(&self) -> Need<'_> {
        Need::Nothing
    }
}

impl Guarded for FetchPreparedRequest {
    /// The kept batch's members are checked at each run ([`check_batch`]).
    fn need(&self) -> Need<'_> {
        Need::Nothing
    }
}

impl Guarded for ReleasePreparedRequest {
    fn need(&self) -> Need<'_> {
        Need::Nothing
    }
}

impl Guarded for ReleaseRequest {
    fn need(&self) -> Need<'_> {
        Need::Nothing
    }
}

/// Decodes a request's control message and checks that the client of
/// `session` may make it.
pub fn admit<T: DeserializeOwned + Guarded>(
    ctx: &ServerContext,
    session: &Session,
    control: &[u8],
) -> Result<T, StoreError> {
    let request: T = codec::decode(control).map_err(|e| StoreError::BadRequest(e.to_string()))?;
    let need = request.need();
    ctx.access()
        .check(&session.identity, need)
        .map_err(StoreError::Unauthorized)?;
    if let Need::On(namespace, _) = need {
        ctx.service.touch(namespace);
    }
    Ok(request)
}

/// A request of many members, each checked as a request of its own.
pub trait Batch {
    /// What each member is.
    type Member: Guarded;
    /// The members, in order.
    fn members(&self) -> &[Self::Member];
}

impl Batch for FetchBatchRequest {
    type Member = FetchRequest;
    fn members(&self) -> &[FetchRequest] {
        &self.members
    }
}

impl Batch for PreparedFetch {
    type Member = FetchRequest;
    fn members(&self) -> &[FetchRequest] {
        &self.members
    }
}

impl Batch for ViewBatchRequest {
    type Member = FetchRequest;
    fn members(&self) -> &[FetchRequest] {
        &self.members
    }
}

impl Guarded for PutMember {
    fn need(&self) -> Need<'_> {
        self.put.need()
    }
}

impl Batch for PutBatchRequest {
    type Member = PutMember;
    fn members(&self) -> &[PutMember] {
        &self.members
    }
}

impl Batch for StatBatchRequest {
    type Member = StatRequest;
    fn members(&self) -> &[StatRequest] {
        &self.members
    }
}

/// [`admit`] for a batch: it has between one and [`MAX_BATCH_MEMBERS`]
/// members, and the client may make every one of them (a batch with one
/// member it may not make is refused whole, naming that member's rule).
pub fn admit_batch<T: DeserializeOwned + Batch>(
    ctx: &ServerContext,
    session: &Session,
    control: &[u8],
) -> Result<T, StoreError> {
    let request: T = codec::decode(control).map_err(|e| StoreError::BadRequest(e.to_string()))?;
    check_batch(ctx, session, &request)?;
    Ok(request)
}

/// The checks of [`admit_batch`] on a batch already decoded (a kept one,
/// at each run: the access table may have been reloaded since).
pub fn check_batch<T: Batch>(ctx: &ServerContext, session: &Session, request: &T) -> Result<(), StoreError> {
    let members = request.members();
    if members.is_empty() {
        return Err(StoreError::BadRequest("a batch needs at least one member".into()));
    }
    if members.len() > MAX_BATCH_MEMBERS {
        return Err(StoreError::Other {
            status: shardd_protocol::Status::TooLarge,
            message: format!(
                "a batch may have at most {MAX_BATCH_MEMBERS} members, this one has {}: split it",
                members.len()
            ),
        });
    }
    let access = ctx.access();
    let mut checked = None;
    for member in members {
        // Members of a batch are mostly of one namespace: check it once.
        let need = member.need();
        if checked == Some(need) {
            continue;
        }
        access
            .check(&session.identity, need)
            .map_err(StoreError::Unauthorized)?;
        if let Need::On(namespace, _) = need {
            ctx.service.touch(namespace);
        }
        checked = Some(need);
    }
    Ok(())
}

/// Whether the client of `session` may read `namespace` (listings show it
/// only those).
pub fn may_read(ctx: &ServerContext, session: &Session, namespace: &shardd_protocol::Namespace) -> bool {
    ctx.access()
        .check(&session.identity, Need::On(namespace, Right::Read))
        .is_ok()
}
