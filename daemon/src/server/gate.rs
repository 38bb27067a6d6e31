//! The one place where a request is checked against the access table:
//! every control message is decoded by [`admit`], which refuses what the
//! peer may not do before anything reaches the [`crate::service`].

use serde::de::DeserializeOwned;
use shardd_protocol::{
    DeleteRequest, DropNamespaceRequest, EvictMode, EvictRequest, FetchRequest, ListRequest, NamespacesRequest,
    PrefetchRequest, PutRequest, ReleaseRequest, ScheduleRequest, SetQuotaRequest, StatRequest, VerifyRequest,
    ViewRequest, codec,
};

use super::ServerContext;
use crate::access::{Need, Right};
use crate::service::Session;
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

/// Whether the client of `session` may read `namespace` (listings show it
/// only those).
pub fn may_read(ctx: &ServerContext, session: &Session, namespace: &shardd_protocol::Namespace) -> bool {
    ctx.access()
        .check(&session.identity, Need::On(namespace, Right::Read))
        .is_ok()
}
