//! The public HTTP API (warp), wire-compatible with the reference tower and Core Lightning's
//! `watchtower-client`. Handlers call the [`Tower`] in-process. Every failure is a JSON body
//! `{"error", "error_code"}`; codes and statuses are listed in `docs/api.md`. Connections are
//! bounded by [`super::server`]; registrations and appointment writes by [`super::admission`].

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bitcoin::consensus::encode::serialize_hex;
use serde::Serialize;
use teos_proto::errors as codes;
use teos_proto::http::{
    AddAppointmentRequest, AddAppointmentResponse, ApiError, AppointmentData, AppointmentJson, GetAppointmentRequest,
    GetAppointmentResponse, GetSubscriptionInfoRequest, PythonAppointmentData, PythonGetAppointmentResponse,
    PythonRegisterResponse, PythonTrackerJson, RegisterBody, RegisterResponse, TrackerJson,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warp::http::StatusCode;
use warp::reject::{LengthRequired, MethodNotAllowed, PayloadTooLarge, Reject};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::admission::{Action, Admission, RateLimits, RetryAfter};
use super::server::{ConnectionLimits, PeerAddr, StreamedBody};
use crate::health::HealthCheck;
use crate::protocol::{Appointment, Dialect, Locator, UserId, LOCATOR_LEN, USER_ID_LEN};
use crate::tower::{RequestError, SubscriptionInfo, Tower};
use crate::watcher::{AppointmentError, AppointmentState};

/// Body limits per route, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// `/register`, `/get_subscription_info`.
    pub small: u64,
    /// `/get_appointment`.
    pub get_appointment: u64,
    /// `/add_appointment`: twice the blob limit (hex) plus room for the other fields.
    pub add_appointment: u64,
}

impl BodyLimits {
    /// Limits for a tower accepting blobs of up to `max_blob_size` bytes.
    pub fn for_blob_size(max_blob_size: usize) -> Self {
        BodyLimits { small: 256, get_appointment: 512, add_appointment: 2 * max_blob_size as u64 + 512 }
    }
}

#[derive(Debug)]
struct UnsupportedContentType;
impl Reject for UnsupportedContentType {}

#[derive(Debug)]
struct RateLimited(RetryAfter);
impl Reject for RateLimited {}

/// Everything the public API is set up with.
#[derive(Debug, Clone, Copy)]
pub struct HttpSettings {
    /// Body limits per route.
    pub bodies: BodyLimits,
    /// Connection caps and timeouts.
    pub connections: ConnectionLimits,
    /// Per-source rate limits.
    pub rates: RateLimits,
    /// Take the source from `X-Real-IP` (behind a reverse proxy).
    pub behind_proxy: bool,
    /// Accept python-teos registrations (`{"public_key"}`).
    pub python_teos_clients: bool,
}

/// A refused request: status, `error_code` and text, turned into a JSON reply at the edge.
#[derive(Debug)]
struct WireError {
    status: StatusCode,
    code: u8,
    message: String,
    /// A rate limit's `Retry-After` (the connection is then closed).
    retry_after: Option<u64>,
}

impl WireError {
    fn into_response(self) -> Response {
        let body = ApiError { error: self.message, error_code: self.code };
        let mut reply = warp::reply::with_status(warp::reply::json(&body), self.status).into_response();
        if let Some(seconds) = self.retry_after {
            let headers = reply.headers_mut();
            headers.insert(warp::http::header::RETRY_AFTER, warp::http::HeaderValue::from(seconds));
            headers.insert(warp::http::header::CONNECTION, warp::http::HeaderValue::from_static("close"));
        }
        reply
    }
}

fn error_reply(status: StatusCode, code: u8, message: impl Into<String>) -> WireError {
    WireError { status, code, message: message.into(), retry_after: None }
}

fn bad_request(code: u8, message: impl Into<String>) -> WireError {
    error_reply(StatusCode::BAD_REQUEST, code, message)
}

fn ok_json<T: Serialize>(body: &T) -> Response {
    warp::reply::json(body).into_response()
}

/// The one mapping from core errors to HTTP status and `error_code`.
fn request_error_reply(e: RequestError) -> WireError {
    let (status, code) = match &e {
        RequestError::SlotsOverflow => (StatusCode::BAD_REQUEST, codes::REGISTRATION_RESOURCE_EXHAUSTED),
        RequestError::AppointmentUnauthorized
        | RequestError::UserUnauthenticated
        | RequestError::UserNotFound
        | RequestError::Expired(_) => (StatusCode::UNAUTHORIZED, codes::INVALID_SIGNATURE_OR_SUBSCRIPTION_ERROR),
        RequestError::OtherDialect(_) => (StatusCode::BAD_REQUEST, codes::INVALID_REQUEST_FORMAT),
        // Code 7: the CLN plugin keeps the user's appointments pending (none is dropped as
        // invalid) and sends them again once the ban is lifted (docs/api.md).
        RequestError::Banned => (StatusCode::UNAUTHORIZED, codes::INVALID_SIGNATURE_OR_SUBSCRIPTION_ERROR),
        RequestError::Appointment(e) => match e {
            AppointmentError::EmptyBlob => (StatusCode::BAD_REQUEST, codes::EMPTY_FIELD),
            AppointmentError::BlobTooBig { .. } => (StatusCode::BAD_REQUEST, codes::APPOINTMENT_FIELD_TOO_BIG),
            AppointmentError::ToSelfDelayTooSmall { .. } => {
                (StatusCode::BAD_REQUEST, codes::APPOINTMENT_FIELD_TOO_SMALL)
            }
            AppointmentError::AlreadyTriggered => (StatusCode::BAD_REQUEST, codes::APPOINTMENT_ALREADY_TRIGGERED),
            AppointmentError::NotFound => (StatusCode::NOT_FOUND, codes::APPOINTMENT_NOT_FOUND),
            // Subscription and store errors never travel inside `Appointment` (see `Tower`).
            AppointmentError::Subscription(_) | AppointmentError::Store(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, codes::UNEXPECTED_ERROR)
            }
        },
        // Code 7: the CLN plugin keeps the appointment and retries (reference-tower.md §9).
        RequestError::BelowDiskReserve(_) => {
            (StatusCode::INSUFFICIENT_STORAGE, codes::INVALID_SIGNATURE_OR_SUBSCRIPTION_ERROR)
        }
        RequestError::TowerFull => (StatusCode::SERVICE_UNAVAILABLE, codes::REGISTRATION_RESOURCE_EXHAUSTED),
        RequestError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, codes::UNEXPECTED_ERROR),
    };
    error_reply(status, code, e.to_string())
}

/// The answer to a request that took longer than `http_request_timeout_secs`; code 7 so that a
/// client retries, and the connection is closed.
pub(super) fn request_timeout_reply() -> Response {
    let mut reply = error_reply(
        StatusCode::REQUEST_TIMEOUT,
        codes::INVALID_SIGNATURE_OR_SUBSCRIPTION_ERROR,
        "The request took too long; try again",
    )
    .into_response();
    reply.headers_mut().insert(warp::http::header::CONNECTION, warp::http::HeaderValue::from_static("close"));
    reply
}

/// Parses a JSON body, mapping serde's complaints to the reference tower's codes. The body must
/// be a JSON object (serde would read an array positionally, python-teos refused anything but a
/// dictionary): anything else is 400 with code 6.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, WireError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') | None => {}
        Some(_) => {
            return Err(bad_request(codes::INVALID_REQUEST_FORMAT, "Invalid request content: not a JSON object"))
        }
    }
    serde_json::from_slice(body).map_err(|e| {
        let message = e.to_string();
        if message.starts_with("missing field") {
            let cut = message.find(" at line").unwrap_or(message.len());
            bad_request(codes::MISSING_FIELD, &message[..cut])
        } else if message.starts_with("invalid type") {
            bad_request(codes::WRONG_FIELD_TYPE, message)
        } else if message.starts_with("Odd number of digits") || message.starts_with("Invalid character") {
            bad_request(codes::WRONG_FIELD_FORMAT, message)
        } else {
            bad_request(codes::INVALID_REQUEST_FORMAT, message)
        }
    })
}

fn check_field(name: &str, bytes: &[u8], expected: usize) -> Result<(), WireError> {
    if bytes.is_empty() {
        return Err(bad_request(codes::EMPTY_FIELD, format!("`{name}` field is empty")));
    }
    if bytes.len() != expected {
        let message = format!("Wrong `{name}` field size. Expected {expected}, received {}", bytes.len());
        return Err(bad_request(codes::WRONG_FIELD_SIZE, message));
    }
    Ok(())
}

fn check_signature(signature: &str) -> Result<(), WireError> {
    if signature.is_empty() {
        return Err(bad_request(codes::EMPTY_FIELD, "`signature` field is empty"));
    }
    Ok(())
}

fn locator_from(bytes: &[u8]) -> Result<Locator, WireError> {
    check_field("locator", bytes, LOCATOR_LEN)?;
    Locator::from_slice(bytes).map_err(|e| bad_request(codes::WRONG_FIELD_SIZE, e.to_string()))
}

/// What the four POST routes share: the body parsed as `R`, `handler` run on it, and its answer
/// (JSON, or a streamed JSON body) or its error as JSON.
async fn json_route<R, Fut>(body: bytes::Bytes, handler: impl FnOnce(R) -> Fut) -> Response
where
    R: serde::de::DeserializeOwned,
    Fut: std::future::Future<Output = Result<Response, WireError>>,
{
    let answer = match parse_body::<R>(&body) {
        Ok(request) => handler(request).await,
        Err(e) => Err(e),
    };
    answer.unwrap_or_else(WireError::into_response)
}

/// `{"user_id"}` registers a rust-teos client, `{"public_key"}` a python-teos one; each gets the
/// reply (and the signed receipt) its client checks.
/// With `python_teos_clients` off, python-teos registrations (and renewals) are refused.
async fn register(tower: Tower, request: RegisterBody, python_teos_clients: bool) -> Result<Response, WireError> {
    let (field, key, dialect) = match (request.user_id, request.public_key) {
        (Some(key), _) => ("user_id", key, Dialect::Rust),
        (None, Some(_)) if !python_teos_clients => {
            let message = "This tower serves rust-teos clients only: register with `user_id`";
            return Err(bad_request(codes::INVALID_REQUEST_FORMAT, message));
        }
        (None, Some(key)) => ("public_key", key, Dialect::Python),
        (None, None) => return Err(bad_request(codes::MISSING_FIELD, "missing field `user_id`")),
    };
    check_field(field, &key, USER_ID_LEN)?;
    let user = UserId::from_slice(&key).map_err(|_| {
        bad_request(
            codes::WRONG_FIELD_FORMAT,
            "Provided public key does not match expected format (33-byte compressed key)",
        )
    })?;
    let receipt = tower.register(user, dialect).await.map_err(request_error_reply)?;
    Ok(match dialect {
        Dialect::Rust => ok_json(&RegisterResponse {
            user_id: receipt.user.to_bytes().to_vec(),
            available_slots: receipt.available_slots,
            subscription_start: receipt.subscription_start,
            subscription_expiry: receipt.subscription_expiry,
            subscription_signature: receipt.signature,
        }),
        Dialect::Python => ok_json(&PythonRegisterResponse {
            public_key: key,
            user_id: receipt.user.to_bytes().to_vec(),
            available_slots: receipt.available_slots,
            subscription_expiry: receipt.subscription_expiry,
            subscription_signature: receipt.signature,
        }),
    })
}

async fn add_appointment(tower: Tower, request: AddAppointmentRequest) -> Result<Response, WireError> {
    let Some(appointment) = request.appointment else {
        return Err(bad_request(codes::MISSING_FIELD, "missing field `appointment`"));
    };
    let locator = locator_from(&appointment.locator)?;
    check_signature(&request.signature)?;
    let appointment =
        Appointment { locator, encrypted_blob: appointment.encrypted_blob, to_self_delay: appointment.to_self_delay };
    let receipt = tower.add_appointment(appointment, request.signature).await.map_err(request_error_reply)?;
    Ok(ok_json(&AddAppointmentResponse {
        locator: receipt.locator.as_bytes().to_vec(),
        start_block: receipt.start_block,
        signature: receipt.signature,
        available_slots: receipt.available_slots,
        subscription_expiry: receipt.subscription_expiry,
    }))
}

async fn get_appointment(tower: Tower, request: GetAppointmentRequest) -> Result<Response, WireError> {
    let locator = locator_from(&request.locator)?;
    check_signature(&request.signature)?;
    match tower.get_appointment(locator, request.signature).await.map_err(request_error_reply)? {
        (Dialect::Rust, Some(state)) => Ok(ok_json(&appointment_state_json(state))),
        (Dialect::Rust, None) => Err(request_error_reply(RequestError::Appointment(AppointmentError::NotFound))),
        (Dialect::Python, state) => Ok(python_appointment_reply(locator, state)),
    }
}

/// python-teos's `get_appointment` reply: 200 `{"locator", "status", "appointment"}`, or 404
/// `{"locator", "status": "not_found"}`.
fn python_appointment_reply(locator: Locator, state: Option<AppointmentState>) -> Response {
    let (status, appointment) = match state {
        None => ("not_found", None),
        Some(AppointmentState::BeingWatched(a)) => (
            "being_watched",
            Some(PythonAppointmentData::Appointment(AppointmentJson {
                locator: a.locator.as_bytes().to_vec(),
                encrypted_blob: a.encrypted_blob,
                to_self_delay: a.to_self_delay,
            })),
        ),
        Some(AppointmentState::DisputeResponded { dispute_txid, penalty }) => (
            "dispute_responded",
            Some(PythonAppointmentData::Tracker(PythonTrackerJson {
                locator: locator.as_bytes().to_vec(),
                dispute_txid: dispute_txid.to_string(),
                penalty_txid: penalty.compute_txid().to_string(),
                penalty_rawtx: serialize_hex(&penalty),
            })),
        ),
    };
    let http_status = if appointment.is_some() { StatusCode::OK } else { StatusCode::NOT_FOUND };
    let body =
        PythonGetAppointmentResponse { locator: locator.as_bytes().to_vec(), status: status.into(), appointment };
    warp::reply::with_status(warp::reply::json(&body), http_status).into_response()
}

fn appointment_state_json(state: AppointmentState) -> GetAppointmentResponse {
    match state {
        AppointmentState::BeingWatched(a) => GetAppointmentResponse {
            appointment: AppointmentData::Appointment(AppointmentJson {
                locator: a.locator.as_bytes().to_vec(),
                encrypted_blob: a.encrypted_blob,
                to_self_delay: a.to_self_delay,
            }),
            status: "being_watched".into(),
        },
        AppointmentState::DisputeResponded { dispute_txid, penalty } => GetAppointmentResponse {
            appointment: AppointmentData::Tracker(TrackerJson {
                dispute_txid: dispute_txid.to_string(),
                penalty_txid: penalty.compute_txid().to_string(),
                penalty_rawtx: serialize_hex(&penalty),
            }),
            status: "dispute_responded".into(),
        },
    }
}

/// `get_subscription_info`, once the user is authenticated and within its own rate: the JSON
/// body `{"available_slots", "subscription_expiry", "locators": [...]}` is streamed, a page of
/// locators read from the store at a time, so its memory is bounded however many the user has.
/// A python-teos user's list is named `appointments`, as python-teos's user record names it.
async fn get_subscription_info(
    tower: Tower,
    admission: Arc<Admission>,
    request: GetSubscriptionInfoRequest,
) -> Result<Response, WireError> {
    check_signature(&request.signature)?;
    let info = tower.subscription_info(request.signature).await.map_err(request_error_reply)?;
    admission.admit_user(&info.user).map_err(rate_limited)?;
    Ok(streamed_subscription_info(tower, info))
}

/// Locators read from the store per chunk of a streamed `get_subscription_info` body.
const LOCATORS_PER_CHUNK: usize = 4096;

fn streamed_subscription_info(tower: Tower, info: SubscriptionInfo) -> Response {
    use futures_util::StreamExt;
    let list = match info.dialect {
        Dialect::Rust => "locators",
        Dialect::Python => "appointments",
    };
    let head = format!(
        "{{\"available_slots\":{},\"subscription_expiry\":{},\"{list}\":[",
        info.available_slots, info.subscription_expiry
    );
    // State: the last locator sent (`None` before the first), or done.
    let chunks = futures_util::stream::unfold(Some(None::<Locator>), move |state| {
        let tower = tower.clone();
        async move {
            let after = state?;
            let page = match tower.locators_page(info.user, after, LOCATORS_PER_CHUNK).await {
                Ok(page) => page,
                Err(e) => return Some((Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>), None)),
            };
            let mut chunk = String::with_capacity(page.len() * 35 + 2);
            for locator in &page {
                if after.is_some() || !chunk.is_empty() {
                    chunk.push(',');
                }
                chunk.push('"');
                chunk.push_str(&locator.to_string());
                chunk.push('"');
            }
            let next = match page.last() {
                Some(last) if page.len() == LOCATORS_PER_CHUNK => Some(Some(*last)),
                _ => {
                    chunk.push_str("]}");
                    None
                }
            };
            Some((Ok(bytes::Bytes::from(chunk)), next))
        }
    });
    let stream = futures_util::stream::once(async move { Ok(bytes::Bytes::from(head)) }).chain(chunks);
    let mut response = warp::reply::with_header(warp::reply(), "content-type", "application/json").into_response();
    response.extensions_mut().insert(StreamedBody::new(Box::pin(stream)));
    response
}

/// Accepts a missing Content-Type (the reference does); refuses any that is not JSON.
fn json_content_type() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    // One header looked at, not the whole map cloned (this runs for every POST).
    warp::header::value(warp::http::header::CONTENT_TYPE.as_str())
        .map(Some)
        .or(warp::any().map(|| None))
        .unify()
        .and_then(|value: Option<warp::http::HeaderValue>| async move {
            let essence = value.as_ref().map(|v| v.to_str().unwrap_or("").split(';').next().unwrap_or("").trim());
            match essence {
                None => Ok(()),
                Some(essence) if essence.eq_ignore_ascii_case("application/json") => Ok(()),
                Some(_) => Err(warp::reject::custom(UnsupportedContentType)),
            }
        })
        .untuple_one()
}

/// The rest of a POST route after its name: no more path, the method, the body's length and
/// type, then the body.
fn post_route(limit: u64) -> impl Filter<Extract = (bytes::Bytes,), Error = Rejection> + Clone {
    warp::path::end()
        .and(warp::post())
        .and(warp::body::content_length_limit(limit))
        .and(json_content_type())
        .and(warp::body::bytes())
}

/// The request's source: the connection's peer, or `X-Real-IP` behind a proxy.
fn source(behind_proxy: bool) -> impl Filter<Extract = (Option<IpAddr>,), Error = Infallible> + Clone {
    let real_ip = warp::header::value("x-real-ip").map(Some).or(warp::any().map(|| None)).unify();
    warp::ext::optional::<PeerAddr>().and(warp::addr::remote()).and(real_ip).map(
        move |peer: Option<PeerAddr>, remote: Option<SocketAddr>, real_ip: Option<warp::http::HeaderValue>| {
            let real_ip = real_ip.filter(|_| behind_proxy);
            let real_ip = real_ip.and_then(|v| v.to_str().ok().and_then(|v| v.trim().parse::<IpAddr>().ok()));
            real_ip.or(peer.map(|p| p.0.ip())).or(remote.map(|a| a.ip()))
        },
    )
}

/// 429 with code 7 (the CLN plugin keeps the appointment and retries: reference-tower.md §9),
/// `Retry-After`, and the connection closed: a source over its limit pays a new connection (a
/// round trip) for its next try.
fn rate_limited(RetryAfter(wait): RetryAfter) -> WireError {
    let seconds = wait.as_secs().max(1);
    let message = format!("Too many requests; try again in {seconds} s");
    WireError {
        status: StatusCode::TOO_MANY_REQUESTS,
        code: codes::INVALID_SIGNATURE_OR_SUBSCRIPTION_ERROR,
        message,
        retry_after: Some(seconds),
    }
}

/// Refuses `action` from a source over its rate limit (before the body is read).
fn admitted(
    action: Action,
    admission: Arc<Admission>,
    behind_proxy: bool,
) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    source(behind_proxy)
        .and_then(move |source: Option<IpAddr>| {
            let admission = admission.clone();
            async move {
                match source.map(|ip| admission.admit(action, ip)) {
                    Some(Err(retry)) => Err(warp::reject::custom(RateLimited(retry))),
                    _ => Ok(()),
                }
            }
        })
        .untuple_one()
}

/// `GET /health`: 200 when the tower follows the chain, 503 otherwise, with the report.
fn health_reply(health: &HealthCheck) -> Response {
    let report = health.report();
    let status = if report.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    warp::reply::with_status(warp::reply::json(&report), status).into_response()
}

/// The router: every route, and JSON bodies for every rejection.
pub fn routes(
    tower: Tower,
    health: HealthCheck,
    admission: Arc<Admission>,
    settings: HttpSettings,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let (limits, proxy, python) = (settings.bodies, settings.behind_proxy, settings.python_teos_clients);
    let with_tower = warp::any().map(move || tower.clone());
    let register = warp::path("register")
        .and(admitted(Action::Register, admission.clone(), proxy))
        .and(post_route(limits.small))
        .and(with_tower.clone())
        .then(move |b, t| json_route(b, move |r| register(t, r, python)));
    let add = warp::path("add_appointment")
        .and(admitted(Action::AddAppointment, admission.clone(), proxy))
        .and(post_route(limits.add_appointment))
        .and(with_tower.clone())
        .then(|b, t| json_route(b, |r| add_appointment(t, r)));
    let get = warp::path("get_appointment")
        .and(post_route(limits.get_appointment))
        .and(with_tower.clone())
        .then(|b, t| json_route(b, |r| get_appointment(t, r)));
    let for_users = admission.clone();
    let info = warp::path("get_subscription_info")
        .and(admitted(Action::SubscriptionInfo, admission.clone(), proxy))
        .and(post_route(limits.small))
        .and(with_tower)
        .then(move |b, t| {
            json_route(b, {
                let admission = for_users.clone();
                move |r| get_subscription_info(t, admission, r)
            })
        });
    let ping = warp::path("ping").and(warp::path::end()).and(warp::get()).map(|| StatusCode::OK.into_response());
    let health = warp::path("health").and(warp::path::end()).and(warp::get()).map(move || health_reply(&health));
    source(proxy)
        .and(warp::method())
        .and(warp::path::full())
        .and(
            register
                .or(add)
                .unify()
                .or(get)
                .unify()
                .or(info)
                .unify()
                .or(ping)
                .unify()
                .or(health)
                .unify()
                .recover(rejection_reply)
                .unify(),
        )
        .map(|client: Option<IpAddr>, method: warp::http::Method, path: warp::path::FullPath, reply: Response| {
            let client = client.map_or_else(|| "unknown".to_string(), |ip| ip.to_string());
            tracing::debug!(%client, %method, path = path.as_str(), status = reply.status().as_u16(), "http request");
            reply
        })
}

async fn rejection_reply(rejection: Rejection) -> Result<Response, Infallible> {
    let reply = if rejection.is_not_found() {
        error_reply(StatusCode::NOT_FOUND, codes::ROUTE_NOT_FOUND, "No such route")
    } else if rejection.find::<MethodNotAllowed>().is_some() {
        error_reply(StatusCode::METHOD_NOT_ALLOWED, codes::METHOD_NOT_ALLOWED, "HTTP method not allowed")
    } else if rejection.find::<LengthRequired>().is_some() {
        error_reply(StatusCode::LENGTH_REQUIRED, codes::CONTENT_LENGTH_REQUIRED, "A content-length header is required")
    } else if rejection.find::<PayloadTooLarge>().is_some() {
        error_reply(StatusCode::PAYLOAD_TOO_LARGE, codes::PAYLOAD_TOO_LARGE, "The request payload is too large")
    } else if let Some(RateLimited(RetryAfter(wait))) = rejection.find::<RateLimited>() {
        let seconds = wait.as_secs().max(1);
        let message = format!("Too many requests from your address; try again in {seconds} s");
        // Code 7: the CLN plugin keeps the appointment and retries (reference-tower.md §9).
        let mut reply =
            error_reply(StatusCode::TOO_MANY_REQUESTS, codes::INVALID_SIGNATURE_OR_SUBSCRIPTION_ERROR, message)
                .into_response();
        reply.headers_mut().insert(warp::http::header::RETRY_AFTER, warp::http::HeaderValue::from(seconds));
        return Ok(reply);
    } else if rejection.find::<UnsupportedContentType>().is_some() {
        error_reply(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            codes::UNSUPPORTED_CONTENT_TYPE,
            "The request's content-type is not supported",
        )
    } else {
        // Nothing of warp's internal description reaches the client.
        tracing::debug!(?rejection, "request refused");
        bad_request(codes::INVALID_REQUEST_FORMAT, "Invalid request")
    };
    Ok(reply.into_response())
}

/// Serves the API on `listener` until `shutdown` fires, then finishes requests in flight.
pub async fn serve(
    listener: TcpListener,
    tower: Tower,
    health: HealthCheck,
    settings: HttpSettings,
    shutdown: CancellationToken,
) {
    let admission = Arc::new(Admission::new(settings.rates));
    let forgetting = tokio::spawn({
        let (admission, shutdown) = (admission.clone(), shutdown.clone());
        async move {
            let mut every = tokio::time::interval(super::admission::FORGET_EVERY);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = every.tick() => admission.forget_idle(),
                }
            }
        }
    });
    let metrics = tower.metrics().clone();
    let routes = routes(tower, health, admission, settings);
    super::server::serve(listener, routes, settings.connections, settings.behind_proxy, metrics, shutdown).await;
    forgetting.abort();
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
