package main

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/strata-mq/strata/inspect"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/session"
)

// sessions prints the durable sessions (package session's records): client ID, shard, owner,
// connected or since when disconnected, expiry, subscriptions with their QoS, outbound QoS 2
// in flight and inbound QoS 2 packet IDs awaiting PUBREL. A session record that does not
// decode is listed with its error and makes the exit status 1.
func (c *command) sessions(args []string) int {
	c.flags()
	if !c.parse(args) {
		return exitUsage
	}
	return show(c, source.sessions, c.printSessions)
}

func (c *command) printSessions(rows []session.SessionView) {
	tw := c.table()
	fmt.Fprintln(tw, "CLIENT\tSHARD\tOWNER\tSTATE\tEXPIRES\tSUBSCRIPTIONS\tQOS2 OUT\tQOS2 IN")
	for _, r := range rows {
		state, expires := "connected", "-"
		switch {
		case r.Error != "":
			state = "ERROR: " + r.Error
		case r.NoSession:
			state = "no session"
		case !r.Connected:
			state = "disconnected " + r.DisconnectedAt.Format(time.RFC3339)
			expires = r.ExpiresAt.Format(time.RFC3339)
		}
		if r.Connected {
			expires = fmt.Sprintf("%s after disconnect", time.Duration(r.ExpirySeconds)*time.Second)
		}
		subs := make([]string, 0, len(r.Subscriptions))
		for _, s := range r.Subscriptions {
			subs = append(subs, fmt.Sprintf("%s:%d", escape([]byte(s.Filter)), s.QoS))
		}
		sent, recv := 0, 0
		for _, q := range r.QoS2 {
			if q.State == "received" {
				recv++
			} else {
				sent++
			}
		}
		out := "-"
		if len(r.QoS2) > 0 {
			out = fmt.Sprintf("%d (%d sent, %d received)", len(r.QoS2), sent, recv)
		}
		in := make([]string, 0, len(r.InboundQoS2))
		for _, p := range r.InboundQoS2 {
			in = append(in, strconv.Itoa(int(p)))
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", escape([]byte(r.ClientID)), r.Shard, orDash(escape([]byte(r.Owner))),
			state, expires, orDash(strings.Join(subs, " ")), out, orDash(strings.Join(in, ",")))
	}
	tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func (d dirSource) sessions() ([]session.SessionView, error) {
	return session.InspectSessions(d.in.NShards(), d.in.ScanRecords)
}

// sessions reads every shard's records from GET /v1/records and decodes them here.
func (s *urlSource) sessions() ([]session.SessionView, error) {
	var info inspect.InfoView
	if err := s.get("/v1/info", nil, &info); err != nil {
		return nil, err
	}
	byShard := make([][]inspect.RecordView, info.NShards)
	for sh := range info.NShards {
		if err := s.get("/v1/records", url.Values{"shard": {strconv.Itoa(sh)}}, &byShard[sh]); err != nil {
			return nil, err
		}
	}
	return session.InspectSessions(info.NShards, func(sh ds.ShardID, prefix []byte, f func(k, v []byte, ver uint64) bool) error {
		for _, r := range byShard[sh] {
			if strings.HasPrefix(string(r.Key), string(prefix)) && !f(r.Key, r.Value, r.Version) {
				break
			}
		}
		return nil
	})
}
