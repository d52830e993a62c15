package inspect

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/strata-mq/strata/ds"
)

// One HTTP convention for every Strata handler: this package's Handler, raftgroup's
// Site.AdminHandler, cmd/ds-node's API and cmd/strata-broker's admin routes. Bodies are JSON
// (Content-Type application/json, Cache-Control no-store); an error is an ErrorBody, with the
// status StatusOf gives:
//
//	400  a request of the caller's making (BadRequest; invalid topic, filter or message;
//	     message too large)
//	401  no or a wrong bearer token (ErrUnauthorized; WWW-Authenticate: Bearer)
//	404  an unknown shard or generation
//	503  retryable: the store is closed, unavailable, over quota, or the request timed out
//	     (ds.IsRetryable); "retryable": true
//	500  anything else
//
// 403 (an endpoint turned off) and 405 are written by the handlers with WriteErrorStatus.

// ErrorBody is the JSON body of an error response.
type ErrorBody struct {
	Error     string `json:"error"`
	Retryable bool   `json:"retryable,omitempty"` // the same request may succeed later
}

// ErrUnauthorized is the error of a request refused for its credentials (status 401).
var ErrUnauthorized = errors.New("strata: unauthorized")

// badRequest marks an error of the caller's making.
type badRequest struct{ err error }

func (e badRequest) Error() string { return e.err.Error() }
func (e badRequest) Unwrap() error { return e.err }

// BadRequest marks err as the caller's: StatusOf gives 400.
func BadRequest(err error) error { return badRequest{err} }

// BadRequestf is BadRequest(fmt.Errorf(format, args...)).
func BadRequestf(format string, args ...any) error { return badRequest{fmt.Errorf(format, args...)} }

// StatusOf returns the HTTP status of err and whether the request may be retried.
func StatusOf(err error) (status int, retryable bool) {
	var br badRequest
	switch {
	case errors.As(err, &br), errors.Is(err, ds.ErrInvalidFilter), errors.Is(err, ds.ErrInvalidTopic),
		errors.Is(err, ds.ErrInvalidMessage), errors.Is(err, ds.ErrMessageTooLarge):
		return http.StatusBadRequest, false
	case errors.Is(err, ErrUnauthorized):
		return http.StatusUnauthorized, false
	case errors.Is(err, ds.ErrShardNotFound), errors.Is(err, ds.ErrGenerationNotFound):
		return http.StatusNotFound, false
	case ds.IsRetryable(err), errors.Is(err, ds.ErrClosed), errors.Is(err, context.Canceled):
		// Shutting down, unavailable, or the caller went away: this node later, or another,
		// may do.
		return http.StatusServiceUnavailable, true
	}
	return http.StatusInternalServerError, false
}

// WriteError answers err with its status (StatusOf) and an ErrorBody.
func WriteError(w http.ResponseWriter, err error) {
	status, retryable := StatusOf(err)
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="strata"`)
	}
	WriteJSON(w, status, ErrorBody{Error: err.Error(), Retryable: retryable})
}

// WriteErrorStatus answers err with the given status and an ErrorBody.
func WriteErrorStatus(w http.ResponseWriter, status int, err error) {
	WriteJSON(w, status, ErrorBody{Error: err.Error(), Retryable: status == http.StatusServiceUnavailable})
}

// WriteJSON answers v as indented JSON with the given status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		status = http.StatusInternalServerError
		b, _ = json.Marshal(ErrorBody{Error: err.Error()})
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// BearerToken returns an authorizer (for WithPayloads, or any handler's guard) that accepts
// the requests carrying "Authorization: Bearer <token>", compared in constant time; others get
// an error wrapping ErrUnauthorized. An empty token accepts nothing.
func BearerToken(token string) func(*http.Request) error {
	want := []byte("Bearer " + token)
	return func(r *http.Request) error {
		got := []byte(r.Header.Get("Authorization"))
		if token == "" || subtle.ConstantTimeCompare(got, want) != 1 {
			return fmt.Errorf("%w: %s %s needs the bearer token", ErrUnauthorized, r.Method, r.URL.Path)
		}
		return nil
	}
}
