package ingress

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"
)

// Error is a request failure with everything the error handler needs: the
// status senders see, a short public message, the metric cause, optional
// Retry-After and WWW-Authenticate values, and the internal error for the
// log. Handlers and verifiers return *Error; anything else becomes a 500.
type Error struct {
	Status int
	// Cause is a stable snake_case label for metrics and logs, e.g.
	// "token_expired" or "queue_unavailable".
	Cause string
	// Message is safe to show to the sender: it says what was wrong and what
	// to do, and never holds a token, key or internal detail.
	Message string
	// RetryAfter, if set, is sent as Retry-After (whole seconds, at least 1).
	RetryAfter time.Duration
	// Challenge, if set, is sent as WWW-Authenticate.
	Challenge string
	// Err is the internal cause, logged under the error ID.
	Err error

	errorID string
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%d %s: %s: %v", e.Status, e.Cause, e.Message, e.Err)
	}
	return fmt.Sprintf("%d %s: %s", e.Status, e.Cause, e.Message)
}

func (e *Error) Unwrap() error { return e.Err }

// Causes used across the package (metric label values). Most name a
// failure; token_reused and malformed_event label accepted requests.
const (
	CauseMissingCredentials = "missing_credentials"
	CauseInvalidToken       = "invalid_token"
	CauseTokenExpired       = "token_expired"
	CauseTokenNotYetValid   = "token_not_yet_valid"
	CauseWrongAudience      = "wrong_audience"
	CauseWrongIssuer        = "wrong_issuer"
	CauseUnknownKey         = "unknown_signing_key"
	CauseForbiddenHeader    = "forbidden_token_header"
	CauseKeysUnavailable    = "signing_keys_unavailable"
	CauseTokenReplayed      = "token_replayed"
	CauseWrongTenant        = "wrong_tenant"
	CauseWrongCaller        = "wrong_caller_app"
	CauseInvalidAPIKey      = "invalid_api_key"
	CauseInvalidSignature   = "invalid_url_signature"
	CauseURLExpired         = "url_expired"
	CauseRateLimited        = "rate_limited"
	CauseInvalidHandshake   = "invalid_handshake"
	CauseOriginNotAllowed   = "origin_not_allowed"
	CauseBodyTooLarge       = "body_too_large"
	CauseTooManyEvents      = "too_many_events"
	CauseBodyTimeout        = "body_timeout"
	CauseBodyIncomplete     = "body_incomplete"
	CauseUnsupportedMedia   = "unsupported_media_type"
	CauseMalformedBody      = "malformed_body"
	CauseInvalidEvent       = "invalid_event"
	CauseQueueUnavailable   = "queue_unavailable"
	CauseEventTooLarge      = "event_too_large"
	CauseOverloaded         = "overloaded"
	CauseNotFound           = "not_found"
	CauseMethodNotAllowed   = "method_not_allowed"
	CauseInternal           = "internal_error"

	// CauseTokenReused labels an accepted request whose Call Automation
	// token, without a jti, had already delivered another body (replay
	// defence auto).
	CauseTokenReused = "token_reused"
	// CauseMalformedEvent labels an accepted request of which at least one
	// event went to the dead-letter queue as MalformedEvent.
	CauseMalformedEvent = "malformed_event"
)

// unauthorized builds a 401 for a JWT route.
func unauthorized(cause, msg string, err error) *Error {
	return &Error{
		Status:    http.StatusUnauthorized,
		Cause:     cause,
		Message:   msg,
		Challenge: `Bearer error="invalid_token"`,
		Err:       err,
	}
}

// denied builds a 401 for a shared-secret route (API key, signed URL): no
// bearer challenge.
func denied(cause, msg string, err error) *Error {
	return &Error{Status: http.StatusUnauthorized, Cause: cause, Message: msg, Err: err}
}

// unavailable builds a 503 with Retry-After.
func unavailable(cause, msg string, retry time.Duration, err error) *Error {
	return &Error{Status: http.StatusServiceUnavailable, Cause: cause, Message: msg, RetryAfter: retry, Err: err}
}

// badRequest builds a 400: only for a request that can never succeed.
func badRequest(cause, msg string, err error) *Error {
	return &Error{Status: http.StatusBadRequest, Cause: cause, Message: msg, Err: err}
}

// tooLarge builds a 413.
func tooLarge(cause, msg string, err error) *Error {
	return &Error{Status: http.StatusRequestEntityTooLarge, Cause: cause, Message: msg, Err: err}
}

// unsupportedMedia builds a 415.
func unsupportedMedia(msg string, err error) *Error {
	return &Error{Status: http.StatusUnsupportedMediaType, Cause: CauseUnsupportedMedia, Message: msg, Err: err}
}

// requestTimeout builds a 408: the body did not arrive whole. Senders retry
// it (Event Grid does), unlike a 400.
func requestTimeout(cause, msg string, err error) *Error {
	return &Error{Status: http.StatusRequestTimeout, Cause: cause, Message: msg, Err: err}
}

// retryAfterValue renders a duration as Retry-After seconds, at least 1.
func retryAfterValue(d time.Duration) string {
	s := int((d + time.Second - 1) / time.Second)
	return strconv.Itoa(max(s, 1))
}

// newErrorID returns a random ID tying a response to its log line.
func newErrorID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// id returns the error's ID, assigning one on first use.
func (e *Error) id() string {
	if e.errorID == "" {
		e.errorID = newErrorID()
	}
	return e.errorID
}

// asError returns err as an *Error, mapping anything else to a 500.
func asError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{Status: http.StatusInternalServerError, Cause: CauseInternal, Message: "internal error; the request was not accepted, retry later", Err: err}
}

// toError maps any handler error, Echo's own included, to an *Error.
func toError(err error) *Error {
	var he *echo.HTTPError
	if errors.As(err, &he) {
		switch he.Code {
		case http.StatusNotFound:
			return &Error{Status: he.Code, Cause: CauseNotFound, Message: "no such route; events go to POST /acs/callbacks or POST /eventgrid"}
		case http.StatusMethodNotAllowed:
			return &Error{Status: he.Code, Cause: CauseMethodNotAllowed, Message: "method not allowed on this route; use POST (and OPTIONS on /eventgrid)"}
		default:
			return &Error{Status: he.Code, Cause: "http_" + strconv.Itoa(he.Code), Message: http.StatusText(he.Code), Err: err}
		}
	}
	return asError(err)
}

// render writes the small JSON error body and headers.
func render(c echo.Context, e *Error) {
	if c.Response().Committed {
		return
	}
	h := c.Response().Header()
	if e.RetryAfter > 0 {
		h.Set("Retry-After", retryAfterValue(e.RetryAfter))
	}
	if e.Challenge != "" {
		h.Set("WWW-Authenticate", e.Challenge)
	}
	if c.Request().Method == http.MethodHead {
		c.NoContent(e.Status)
		return
	}
	c.JSON(e.Status, map[string]string{"error": e.Message, "id": e.id()})
}
