//! The `error_code` numbers of the public HTTP API. 1–65 and 255 are the reference tower's;
//! 40–44 are ours, for failures the reference answered with plain text. See `docs/api.md`.

/// A required field is missing (or `appointment` is null).
pub const MISSING_FIELD: u8 = 1;
/// A field is present but empty.
pub const EMPTY_FIELD: u8 = 2;
/// A field has the wrong JSON type.
pub const WRONG_FIELD_TYPE: u8 = 3;
/// A field has the wrong number of bytes.
pub const WRONG_FIELD_SIZE: u8 = 4;
/// A field is not in the expected format (bad hex, not a public key).
pub const WRONG_FIELD_FORMAT: u8 = 5;
/// The body is not a valid request (empty, not JSON, out-of-range numbers).
pub const INVALID_REQUEST_FORMAT: u8 = 6;
/// Bad signature, unknown user, no slots left, or expired subscription. Clients re-register.
pub const INVALID_SIGNATURE_OR_SUBSCRIPTION_ERROR: u8 = 7;
/// The tower cannot serve the request right now.
pub const SERVICE_UNAVAILABLE: u8 = 32;
/// `to_self_delay` is below the tower's minimum.
pub const APPOINTMENT_FIELD_TOO_SMALL: u8 = 33;
/// `encrypted_blob` is above the tower's maximum.
pub const APPOINTMENT_FIELD_TOO_BIG: u8 = 34;
/// The appointment's dispute was already seen and its penalty is being followed.
pub const APPOINTMENT_ALREADY_TRIGGERED: u8 = 35;
/// No appointment for that locator and user.
pub const APPOINTMENT_NOT_FOUND: u8 = 36;
/// No such route.
pub const ROUTE_NOT_FOUND: u8 = 40;
/// The route exists but not for this method.
pub const METHOD_NOT_ALLOWED: u8 = 41;
/// The request has no Content-Length.
pub const CONTENT_LENGTH_REQUIRED: u8 = 42;
/// The body is over the route's size limit.
pub const PAYLOAD_TOO_LARGE: u8 = 43;
/// The Content-Type is not JSON.
pub const UNSUPPORTED_CONTENT_TYPE: u8 = 44;
/// Registration would overflow the slot count.
pub const REGISTRATION_RESOURCE_EXHAUSTED: u8 = 65;
/// The tower failed internally (e.g. its disk); nothing was stored.
pub const UNEXPECTED_ERROR: u8 = 255;
