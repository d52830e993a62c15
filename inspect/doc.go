// Package inspect is Strata's operator tooling: what cmd/ds-info, the admin HTTP endpoints and
// a broker's monitoring use, kept out of package ds, which is the API a broker calls.
//
//   - Inspector (Open, OpenReplicas): a read-only view of a stopped store — an embedded data
//     directory or a replicated site's replica stores — over a filesystem that refuses writes.
//     It starts nothing and creates nothing; a running node's directory lock refuses it
//     (ErrInUse).
//   - Check: every key and value of the stores, judged by the packages that wrote them
//     (shard.MetaCheck for a shard's meta keys, layout.Verify for a generation's keys), plus
//     what needs the whole shard: timestamps inside their generation, stored message counts
//     and index keys against the messages found.
//   - The JSON views (InfoView, GenerationView, StreamView, TrieView, MessageView, RecordView),
//     the same rows from an Inspector and from a running *ds.DB (Source).
//   - Handler: the admin HTTP handler of a running DB; WithPayloads guards the endpoints that
//     serve stored payloads, off by default.
//   - Collector: the DB's metrics as a prometheus.Collector.
//   - The HTTP convention of every Strata handler: ErrorBody, StatusOf, WriteError, BearerToken.
//
// # Invariant
//
// This package decodes no stored byte and spells no key itself: the format owners expose
// read-only loaders and verifiers (ds.Manifest.Stores, shard.LoadStored, shard.MetaCheck,
// layout.KeyGeneration, layout.Verify), so a format change has one place to change.
package inspect
