//! The ledger over HTTP (R21-R23, R27). Checkpoints and proofs are hashes
//! only, so every authenticated party may fetch them (a developer checks
//! that its receipt stays in the history the regulator sees); the feed of
//! whole entries and receipts for any entry are the regulator's.
//!
//! Only the regulator sees the ledger as it stands. Everyone else sees it
//! as of the latest published checkpoint (signed and published at a fixed
//! pace by the server, see [`crate::ledger`]): the current checkpoint, the
//! stored ones and proofs up to that size only, so that polling them does
//! not time each query of a running job (I14).

use super::auth::Auth;
use super::blocking;
use super::{ApiError, ApiResult};
use crate::ledger_views;
use crate::state::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use scenarios::ledger::{Receipt, SignedCheckpoint, VerifierKey};
use scenarios::party::Role;
use serde::Deserialize;
use serde_json::{json, Value};
use std::io::Write;
use std::time::Duration;

pub(crate) async fn public_key(State(st): State<AppState>) -> ApiResult<Json<Value>> {
    let note_key = st.keys.note_key();
    Ok(Json(json!({
        "algorithm": "ed25519",
        "public_key": st.keys.public_key_hex(),
        "generation": st.keys.current_generation(),
        "first_public_key": st.keys.first_public_key_hex(),
        "origin": note_key.name,
        "note_key": note_key.to_string(),
        "keys": st.keys.ledger_history(),
    })))
}

/// The current signed checkpoint (signed now if the ledger grew) for the
/// regulator; the latest published one for everyone else.
pub(crate) async fn checkpoint(
    State(st): State<AppState>,
    Auth(actor): Auth,
) -> ApiResult<Json<SignedCheckpoint>> {
    Ok(Json(
        blocking(move || ledger_views::checkpoint_for(&st, &actor)).await?,
    ))
}

/// A range of stored checkpoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Range {
    #[serde(default)]
    from: u64,
    #[serde(default = "u64_max")]
    to: u64,
}

fn u64_max() -> u64 {
    u64::MAX
}

/// Stored checkpoints in a size range: every one for the regulator, the
/// published ones for everyone else.
pub(crate) async fn checkpoints(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Query(r): Query<Range>,
) -> ApiResult<Json<Value>> {
    let list = blocking(move || ledger_views::checkpoints_for(&st, &actor, r.from, r.to)).await?;
    Ok(Json(json!({"checkpoints": list})))
}

/// An inclusion proof request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InclusionQuery {
    seq: u64,
    size: u64,
}

pub(crate) async fn inclusion(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Query(q): Query<InclusionQuery>,
) -> ApiResult<Json<Value>> {
    let proof = blocking(move || ledger_views::inclusion_for(&st, &actor, q.seq, q.size)).await?;
    Ok(Json(json!({"seq": q.seq, "size": q.size, "proof": proof})))
}

/// A consistency proof request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsistencyQuery {
    first: u64,
    second: u64,
}

pub(crate) async fn consistency(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Query(q): Query<ConsistencyQuery>,
) -> ApiResult<Json<Value>> {
    let proof = blocking(move || ledger_views::consistency_for(&st, &actor, q.first, q.second)).await?;
    Ok(Json(
        json!({"first": q.first, "second": q.second, "proof": proof}),
    ))
}

/// The regulator's receipt for any entry.
pub(crate) async fn receipt(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(seq): Path<u64>,
) -> ApiResult<Json<Receipt>> {
    actor.require(Role::Regulator)?;
    Ok(Json(blocking(move || ledger_views::receipt(&st, seq)).await?))
}

/// A witness's request: the size it last cosigned (0 the first time).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WitnessQuery {
    #[serde(default)]
    from: u64,
}

/// For the regulator's witness (`invis witness`): the latest published
/// checkpoint with its C2SP note, and the consistency proof to it from the
/// size the witness last cosigned. 409 when the published ledger is smaller
/// than that size.
pub(crate) async fn witness_checkpoint(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Query(q): Query<WitnessQuery>,
) -> ApiResult<Json<Value>> {
    actor.require(Role::Regulator)?;
    let from = q.from;
    let (cp, proof, chain, chain_proofs) = blocking(move || ledger_views::for_witness(&st, from)).await?;
    // The key chain: each ledger key announcement before the checkpoint,
    // under the tree ending at it (signed by the key before), with the
    // consistency proof from that tree to the checkpoint.
    Ok(Json(json!({
        "checkpoint": cp,
        "consistency": {"from": q.from, "proof": proof},
        "key_chain": chain,
        "key_chain_consistency": chain_proofs,
    })))
}

/// A witness cosignature of a published checkpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CosignatureBody {
    /// The checkpoint's tree size.
    size: u64,
    /// The witness's verifier key, `<name>+<key hash>+<base64 key>`.
    witness_key: String,
    /// The `cosignature/v1` signature line.
    cosignature: String,
}

/// Stores a witness's cosignature once it verifies over the published
/// checkpoint of that size, and records it in the ledger: from then on
/// the checkpoint's note carries it in receipts, exports and checkpoint
/// answers. 201 when stored, 200 when this witness had cosigned that size
/// already (the first cosignature is kept).
pub(crate) async fn post_cosignature(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Json(b): Json<CosignatureBody>,
) -> ApiResult<Response> {
    actor.require(Role::Regulator)?;
    let witness =
        VerifierKey::parse(&b.witness_key).map_err(|e| ApiError::BadRequest(format!("witness_key: {e}")))?;
    let name = witness.name.clone();
    let stored =
        blocking(move || ledger_views::cosign(&st, &actor, b.size, &witness, &b.cosignature)).await?;
    let status = if stored {
        axum::http::StatusCode::CREATED
    } else {
        axum::http::StatusCode::OK
    };
    Ok((
        status,
        Json(json!({"size": b.size, "witness": name, "stored": stored})),
    )
        .into_response())
}

/// Where a feed starts and whether it keeps following.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FeedQuery {
    #[serde(default)]
    from: u64,
    #[serde(default)]
    follow: bool,
}

/// How often a following feed looks for new entries.
const FOLLOW_POLL: Duration = Duration::from_millis(500);

/// The ledger as an NDJSON stream from entry `from` (R23): the export
/// format, streamed page by page so any size is served in constant memory.
/// A feed from 0 starts with the header; a feed resumed from `n` does not,
/// so appending it to the first `n` entries of an earlier one gives one
/// valid export. With `follow=true` the stream stays open and carries new
/// entries, each burst closed by a signed checkpoint, until the client
/// goes away.
pub(crate) async fn feed(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Query(q): Query<FeedQuery>,
) -> ApiResult<Response> {
    actor.require(Role::Regulator)?;
    let (s, from) = (st.clone(), q.from);
    blocking(move || ledger_views::check_feed_start(&s, from)).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        };
        let gone = out.tx.clone();
        ledger_views::feed(&st, q.from, q.follow, FOLLOW_POLL, &mut out, || gone.is_closed());
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Bytes sent to the client per chunk.
const CHUNK: usize = 64 << 10;

/// Writes into the response stream; fails once the client has gone.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    buf: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))
    }
}
