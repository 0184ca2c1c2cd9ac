//! The three SDS methods for one instance: what its socket serves.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::metrics::SdsMetrics;
use super::secrets::{check_type, Sources, SECRET_TYPE};
use super::slots::Slots;
use super::stream::{combined_version, Ctx, ResponseStream};
use super::Workload;
use super::{delta, sotw};

/// How long `FetchSecrets` waits for a secret that does not exist yet.
const FETCH_WAIT: Duration = Duration::from_secs(10);

/// The SDS methods bound to one instance.
pub struct Sds {
    workload: Workload,
    metrics: Arc<SdsMetrics>,
    slots: Slots,
    cancel: CancellationToken,
}

impl Sds {
    /// Serves `workload` until `cancel`.
    pub fn new(
        workload: Workload,
        metrics: Arc<SdsMetrics>,
        slots: Slots,
        cancel: CancellationToken,
    ) -> Self {
        Sds {
            workload,
            metrics,
            slots,
            cancel,
        }
    }

    fn ctx(&self) -> Ctx {
        let td_id = self.workload.bundle.borrow().trust_domain.id_string();
        Ctx {
            sources: Sources::of(&self.workload),
            workload: self.workload.clone(),
            metrics: self.metrics.clone(),
            cancel: self.cancel.clone(),
            td_id,
            _slot: None,
        }
    }

    /// The context of a new stream, holding a slot: none left refuses the stream.
    fn stream_ctx(&self) -> Result<Ctx, Status> {
        Ok(Ctx {
            _slot: Some(self.slots.take()?),
            ..self.ctx()
        })
    }

    /// Runs `requests` through a `StreamSecrets` stream's state machine, with no client: the
    /// responses, and the error that ended it if one did. For fuzzing.
    pub fn replay_sotw(
        &self,
        requests: Vec<DiscoveryRequest>,
    ) -> (Vec<DiscoveryResponse>, Option<Status>) {
        sotw::replay(&self.ctx(), requests)
    }

    /// As [`Sds::replay_sotw`], for `DeltaSecrets`.
    pub fn replay_delta(
        &self,
        requests: Vec<DeltaDiscoveryRequest>,
    ) -> (Vec<DeltaDiscoveryResponse>, Option<Status>) {
        delta::replay(&self.ctx(), requests)
    }

    /// `StreamSecrets`.
    pub fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<ResponseStream<DiscoveryResponse>>, Status> {
        let ctx = self.stream_ctx()?;
        Ok(Response::new(sotw::responses(request.into_inner(), ctx)))
    }

    /// `DeltaSecrets`.
    pub fn delta_secrets(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<ResponseStream<DeltaDiscoveryResponse>>, Status> {
        let ctx = self.stream_ctx()?;
        Ok(Response::new(delta::responses(request.into_inner(), ctx)))
    }

    /// `FetchSecrets`: the named secrets now, waiting a while for ones not issued yet.
    pub async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let req = request.into_inner();
        check_type(&req.type_url)?;
        if req.resource_names.is_empty() {
            return Err(Status::invalid_argument("name at least one secret"));
        }
        let mut ctx = self.ctx();
        let kinds = req
            .resource_names
            .iter()
            .map(|n| ctx.classify(n).map(|k| (n.clone(), k)))
            .collect::<Result<Vec<_>, _>>()?;
        let deadline = tokio::time::Instant::now() + FETCH_WAIT;
        loop {
            let built: Option<Vec<_>> = kinds
                .iter()
                .map(|(n, k)| ctx.sources.build(n, *k).map(|b| (n.as_str(), b)))
                .collect();
            if let Some(built) = built {
                let version = combined_version(built.iter().map(|(n, b)| (*n, b)));
                for (_, k) in &kinds {
                    self.metrics.pushed(*k);
                }
                return Ok(Response::new(DiscoveryResponse {
                    version_info: version,
                    resources: built.into_iter().map(|(_, b)| b.any).collect(),
                    type_url: SECRET_TYPE.to_string(),
                    ..Default::default()
                }));
            }
            tokio::select! {
                _ = ctx.sources.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(Status::unavailable("this instance has no certificate yet; retry"));
                }
                _ = ctx.cancel.cancelled() => {
                    return Err(Status::unavailable("this instance was deregistered"));
                }
            }
        }
    }
}
