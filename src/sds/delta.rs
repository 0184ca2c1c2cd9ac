//! `DeltaSecrets`: the incremental protocol. Each name carries its own version; only what
//! changed is sent.

use std::collections::{BTreeMap, HashMap};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use tonic::Streaming;

use super::acks::AckSlot;
use super::names::SecretKind;
use super::secrets::{check_type, SECRET_TYPE};
use super::stream::{Ctx, Outcome, ResponseStream};

#[derive(Default)]
struct State {
    names: BTreeMap<String, SecretKind>,
    /// The version of each name last sent on this stream.
    sent: HashMap<String, String>,
    nonces: u64,
    last_nonce: String,
    /// Names in the last response, for counting its ACK or NACK.
    in_flight: Vec<SecretKind>,
    /// While a trust bundle is subscribed: this stream's place among the acknowledgements.
    bundle_slot: Option<AckSlot>,
    /// The bundle generation of the last response, if it carried a bundle.
    in_flight_bundle: Option<u64>,
}

/// The responses of one delta stream.
pub fn responses(
    inbound: Streaming<DeltaDiscoveryRequest>,
    ctx: Ctx,
) -> ResponseStream<DeltaDiscoveryResponse> {
    super::stream::drive(inbound, ctx, State::default(), on_request, |s, c, _| {
        respond(s, c)
    })
}

/// [`super::stream::replay`] for this protocol. For fuzzing.
pub(crate) fn replay(
    ctx: &Ctx,
    requests: Vec<DeltaDiscoveryRequest>,
) -> (Vec<DeltaDiscoveryResponse>, Option<tonic::Status>) {
    super::stream::replay(ctx, State::default(), requests, on_request, |s, c, _| {
        respond(s, c)
    })
}

fn on_request(state: &mut State, ctx: &Ctx, req: DeltaDiscoveryRequest) -> Outcome {
    if let Err(status) = check_type(&req.type_url) {
        return Outcome::End(Some(status));
    }
    if !req.response_nonce.is_empty() && req.response_nonce == state.last_nonce {
        let kinds = std::mem::take(&mut state.in_flight);
        match &req.error_detail {
            Some(err) => {
                kinds.iter().for_each(|k| ctx.metrics.nacked(*k));
                // A rejected bundle is not held, whatever is acknowledged next.
                state.in_flight_bundle = None;
                tracing::warn!(instance = %ctx.instance(), error = %err.message,
                    "sidecar rejected a secret; it keeps the last one it accepted");
            }
            None => {
                kinds.iter().for_each(|k| ctx.metrics.acked(*k));
                if let (Some(slot), Some(generation)) =
                    (&state.bundle_slot, state.in_flight_bundle.take())
                {
                    slot.acked(generation);
                }
            }
        }
    }
    for name in &req.resource_names_unsubscribe {
        state.names.remove(name);
        state.sent.remove(name);
    }
    for name in &req.resource_names_subscribe {
        match ctx.classify(name) {
            Ok(kind) => {
                state.names.insert(name.clone(), kind);
                // Sent even if the client says it has this version: a new subscription
                // always gets the secret.
                state.sent.remove(name);
            }
            Err(status) => return Outcome::End(Some(status)),
        }
    }
    ctx.metrics
        .bundle_acks()
        .follow(&mut state.bundle_slot, state.names.values());
    Outcome::Push { force: false }
}

fn respond(state: &mut State, ctx: &Ctx) -> Option<DeltaDiscoveryResponse> {
    // Read before building, so the content is at least as new as the generation recorded.
    let generation = ctx.workload.bundle.borrow().generation;
    let mut resources = Vec::new();
    let mut kinds = Vec::new();
    for (name, kind) in &state.names {
        let Some(built) = ctx.sources.build(name, *kind) else {
            continue;
        };
        if state.sent.get(name) == Some(&built.version) {
            continue;
        }
        state.sent.insert(name.clone(), built.version.clone());
        kinds.push(*kind);
        resources.push(Resource {
            name: name.clone(),
            version: built.version,
            resource: Some(built.any),
            ..Default::default()
        });
    }
    if resources.is_empty() {
        return None;
    }
    for k in &kinds {
        ctx.metrics.pushed(*k);
    }
    // A bundle not yet acknowledged stays pending through later certificate-only responses:
    // Envoy applies responses in order.
    if kinds.iter().any(|k| *k != SecretKind::Certificate) {
        state.in_flight_bundle = Some(generation);
    }
    state.in_flight = kinds;
    state.nonces += 1;
    state.last_nonce = state.nonces.to_string();
    Some(DeltaDiscoveryResponse {
        resources,
        type_url: SECRET_TYPE.to_string(),
        nonce: state.last_nonce.clone(),
        ..Default::default()
    })
}
