//! `StreamSecrets`: the state-of-the-world protocol, one state machine per stream. The
//! machine runs inside the response stream itself (no task, no channel per stream), so an
//! open stream costs little more than its state.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use tonic::Streaming;

use super::acks::AckSlot;
use super::names::SecretKind;
use super::secrets::{check_type, SECRET_TYPE};
use super::stream::{Ctx, Outcome, ResponseStream};

/// One stream's state: what is subscribed and what was last sent.
#[derive(Default)]
struct State {
    names: BTreeMap<String, SecretKind>,
    nonces: u64,
    last_nonce: String,
    last_version: Option<String>,
    /// While a trust bundle is subscribed: this stream's place among the acknowledgements.
    bundle_slot: Option<AckSlot>,
    /// The bundle generation the last response was built from, if it carried a bundle.
    sent_bundle: Option<u64>,
}

/// The responses of one stream until the client leaves, an error ends it, or the instance
/// goes away.
pub fn responses(
    inbound: Streaming<DiscoveryRequest>,
    ctx: Ctx,
) -> ResponseStream<DiscoveryResponse> {
    super::stream::drive(inbound, ctx, State::default(), on_request, respond)
}

/// [`super::stream::replay`] for this protocol. For fuzzing.
pub(crate) fn replay(
    ctx: &Ctx,
    requests: Vec<DiscoveryRequest>,
) -> (Vec<DiscoveryResponse>, Option<tonic::Status>) {
    super::stream::replay(ctx, State::default(), requests, on_request, respond)
}

fn on_request(state: &mut State, ctx: &Ctx, req: DiscoveryRequest) -> Outcome {
    if let Err(status) = check_type(&req.type_url) {
        return Outcome::End(Some(status));
    }
    // A reply to an older response than the last one sent is overtaken; the client will
    // answer the newest one.
    if !req.response_nonce.is_empty() && req.response_nonce != state.last_nonce {
        return Outcome::Quiet;
    }
    if let Some(err) = &req.error_detail {
        for kind in state.names.values() {
            ctx.metrics.nacked(*kind);
        }
        tracing::warn!(instance = %ctx.instance(), names = ?state.names.keys().collect::<Vec<_>>(),
            rejected_version = %state.last_version.as_deref().unwrap_or(""),
            kept_version = %req.version_info, error = %err.message,
            "sidecar rejected a secret; it keeps the last one it accepted");
        return Outcome::Quiet;
    }
    let mut names = BTreeMap::new();
    for name in &req.resource_names {
        match ctx.classify(name) {
            Ok(kind) => {
                names.insert(name.clone(), kind);
            }
            Err(status) => return Outcome::End(Some(status)),
        }
    }
    let added = names.keys().any(|n| !state.names.contains_key(n));
    state.names = names;
    if !ctx
        .metrics
        .bundle_acks()
        .follow(&mut state.bundle_slot, state.names.values())
    {
        state.sent_bundle = None;
    }
    let is_ack = !req.response_nonce.is_empty() && !added;
    if is_ack {
        for kind in state.names.values() {
            ctx.metrics.acked(*kind);
        }
        if let (Some(slot), Some(generation)) = (&state.bundle_slot, state.sent_bundle) {
            slot.acked(generation);
        }
        // Content may have changed while the client was applying the last response.
        return Outcome::Push { force: false };
    }
    Outcome::Push { force: added }
}

/// The response for everything subscribed that exists, unless it would repeat the last one
/// (`force` sends it anyway: a name was newly subscribed). `None` also while nothing exists
/// yet: the request stays open instead of being answered empty.
fn respond(state: &mut State, ctx: &Ctx, force: bool) -> Option<DiscoveryResponse> {
    // Read before building, so the content is at least as new as the generation recorded.
    let generation = ctx.workload.bundle.borrow().generation;
    let built: Vec<_> = state
        .names
        .iter()
        .filter_map(|(name, kind)| ctx.sources.build(name, *kind).map(|b| (name, *kind, b)))
        .collect();
    if built.is_empty() {
        return None;
    }
    let version = super::stream::combined_version(built.iter().map(|(n, _, b)| (n.as_str(), b)));
    if !force && state.last_version.as_deref() == Some(version.as_str()) {
        return None;
    }
    state.nonces += 1;
    state.last_nonce = state.nonces.to_string();
    state.last_version = Some(version.clone());
    state.sent_bundle = state.bundle_slot.is_some().then_some(generation);
    for (_, kind, _) in &built {
        ctx.metrics.pushed(*kind);
    }
    Some(DiscoveryResponse {
        version_info: version,
        resources: built.into_iter().map(|(_, _, b)| b.any).collect(),
        type_url: SECRET_TYPE.to_string(),
        nonce: state.last_nonce.clone(),
        ..Default::default()
    })
}
