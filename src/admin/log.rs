//! `/v1/log/…`: the ledger as a C2SP tlog-tiles log. The checkpoint and the hash tiles are
//! open, as the trust bundle is: they hold hashes and the signed tree head, nothing about any
//! app. Entry bundles hold the records themselves and need the right to read the ledger.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::AdminState;
use crate::ledger::tiles::TilePath;

/// Full tiles never change; a partial one is superseded as the log grows.
const FULL_TILE_CACHE: &str = "public, max-age=31536000, immutable";
const PARTIAL_TILE_CACHE: &str = "no-cache";

/// `GET /v1/log/checkpoint`: the latest signed checkpoint.
pub async fn checkpoint(State(state): State<AdminState>) -> Response {
    match state.audit.checkpoint().await {
        Ok(Some(note)) => (
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            note,
        )
            .into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            "no checkpoint is signed yet; the server signs one within seconds of starting\n",
        )
            .into_response(),
        Err(e) => unavailable(&e),
    }
}

/// `GET /v1/log/key`: the keys checkpoints are checked with (`name+id+key`), current first,
/// one a line.
pub async fn key(State(state): State<AdminState>) -> Response {
    match state.audit.verifier_keys().await {
        Ok(keys) => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            keys.iter().map(|k| format!("{k}\n")).collect::<String>(),
        )
            .into_response(),
        Err(e) => unavailable(&e),
    }
}

/// `GET /v1/log/tile/<L>/<N>[.p/<W>]`: hash tiles.
pub async fn hash_tile(state: State<AdminState>, Path(path): Path<String>) -> Response {
    match TilePath::parse(&path) {
        Some(tile @ TilePath::Hashes { .. }) => serve(state, tile).await,
        _ => not_a_tile(&path),
    }
}

/// `GET /v1/log/tile/entries/<N>[.p/<W>]`: entry bundles.
pub async fn entries(state: State<AdminState>, Path(path): Path<String>) -> Response {
    let path = format!("entries/{path}");
    match TilePath::parse(&path) {
        Some(tile @ TilePath::Entries { .. }) => serve(state, tile).await,
        _ => not_a_tile(&path),
    }
}

async fn serve(State(state): State<AdminState>, tile: TilePath) -> Response {
    let full = matches!(
        tile,
        TilePath::Hashes { width: 256, .. } | TilePath::Entries { width: 256, .. }
    );
    match state.audit.tile(tile).await {
        Ok(Some(bytes)) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (
                    header::CACHE_CONTROL,
                    if full {
                        FULL_TILE_CACHE
                    } else {
                        PARTIAL_TILE_CACHE
                    },
                ),
            ],
            bytes,
        )
            .into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            format!("the log holds no tile {} yet\n", tile.render()),
        )
            .into_response(),
        Err(e) => unavailable(&e),
    }
}

fn not_a_tile(path: &str) -> Response {
    let shown: String = path.chars().take(200).collect();
    (
        StatusCode::BAD_REQUEST,
        format!(
            "{shown:?} is not a tile path: <level>/<index>[.p/<width>] or \
             entries/<index>[.p/<width>], the index in groups of three digits (x001/234)\n"
        ),
    )
        .into_response()
}

fn unavailable(e: &crate::store::Error) -> Response {
    tracing::error!(error = %e, "cannot read the log");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("cannot read the log: {e}\n"),
    )
        .into_response()
}
