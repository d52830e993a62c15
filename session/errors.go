package session

import "errors"

// Errors of package session; every one is matched with errors.Is.
var (
	// ErrTakenOver: a newer connection (on this site or another) took the session over; this
	// Session is fenced off and writes nothing more. The broker closes its connection.
	ErrTakenOver = errors.New("strata/session: session taken over by a newer connection")
	// ErrUnknownPacketID: an acknowledgement (PUBACK, PUBREC, PUBCOMP, PUBREL) names a packet
	// ID that is not in flight, or was acknowledged already. Nothing changed.
	ErrUnknownPacketID = errors.New("strata/session: unknown packet ID")
	// ErrWrongAck: the acknowledgement does not fit the delivery's QoS or state (a PUBACK for
	// a QoS 2 delivery, a PUBCOMP before its PUBREC). Nothing changed.
	ErrWrongAck = errors.New("strata/session: acknowledgement does not match the delivery")
	// ErrTooManySubscriptions: Subscribe beyond Options.MaxSubscriptions. Nothing changed.
	ErrTooManySubscriptions = errors.New("strata/session: too many subscriptions")
	// ErrSessionClosed: the Session was disconnected (or its Store closed).
	ErrSessionClosed = errors.New("strata/session: session closed")
	// ErrInvalidArgument: a client ID, packet ID, QoS, subscription identifier, expiry or
	// receive maximum out of its range. Nothing changed.
	ErrInvalidArgument = errors.New("strata/session: invalid argument")
)
