package layout

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// Record kinds of the persisted trie (see the package doc).
const (
	recordEdge   byte = 1
	recordStream byte = 2
)

// Root node IDs.
const (
	rootNode    uint32 = 0 // topics not beginning with '$'
	sysRootNode uint32 = 1 // topics beginning with '$'
)

// node is one trie node. A node is reached by a literal edge (edge holds the level) or by the
// '+' edge of its parent (plus is true).
type node struct {
	id       uint32
	parent   *node
	depth    int // number of levels from the root to this node
	edge     string
	plus     bool
	children map[string]*node // literal edges
	plusEdge *node
	stream   bool     // some topic ends here: the node is a stream
	pattern  []string // levels from the root, "+" for a plus edge; set for stream nodes
	// committed is set once the stream is committed; readers see only committed streams. A
	// node that existed before may become a stream in a batch that is then aborted, so the
	// node ID alone (committedNodes) does not tell.
	committed bool
	streamSeq uint32 // seq of the stream record; the stream is visible once it is below t.visible
}

// trie is the learned topic structure of one generation.
//
// The writer goroutine calls learn, commit and abort; readers call match and patternOf
// concurrently. mu guards every field.
type trie struct {
	mu         sync.RWMutex
	thresholds []int
	nodes      []*node // by ID
	records    uint32  // records persisted or pending; the next record's seq
	// Undo state since the last commit.
	committedNodes   int
	committedRecords uint32
	// visible is the record watermark readers see: a stream is visible once its record's seq
	// is below it. It trails committedRecords until the batch holding the records is durable
	// (publish), so a reader is never handed a stream that a crash could take back.
	visible        uint32
	pendingStreams []*node
}

func newTrie(thresholds []int) *trie {
	t := &trie{thresholds: thresholds}
	t.nodes = []*node{
		{id: rootNode, children: map[string]*node{}},
		{id: sysRootNode, children: map[string]*node{}},
	}
	t.committedNodes = len(t.nodes)
	return t
}

func (t *trie) threshold(depth int) int {
	if depth < len(t.thresholds) {
		return t.thresholds[depth]
	}
	return t.thresholds[len(t.thresholds)-1]
}

func rootFor(levels []string) uint32 {
	if len(levels) > 0 && strings.HasPrefix(levels[0], "$") {
		return sysRootNode
	}
	return rootNode
}

// learn follows (learning where needed) the path of a topic and returns its stream node and the
// positions (0-based) of its varying levels, appended to varying. New edges and streams are
// appended as records to emit, which the caller writes in the same batch as the message.
//
// REQUIRES: the caller is the only writer.
func (t *trie) learn(levels []string, varying []int, emit func(seq uint32, rec []byte)) (*node, []int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.nodes[rootFor(levels)]
	for i, lv := range levels {
		if c := n.children[lv]; c != nil {
			n = c
			continue
		}
		if n.plusEdge != nil {
			n = n.plusEdge
			varying = append(varying, i)
			continue
		}
		plus := len(n.children) >= t.threshold(i)
		n = t.addEdgeLocked(n, lv, plus, emit)
		if plus {
			varying = append(varying, i)
		}
	}
	if !n.stream {
		t.markStreamLocked(n, emit)
	}
	return n, varying
}

func (t *trie) addEdgeLocked(parent *node, literal string, plus bool, emit func(uint32, []byte)) *node {
	c := &node{id: uint32(len(t.nodes)), parent: parent, depth: parent.depth + 1, children: map[string]*node{}}
	if plus {
		c.plus = true
		parent.plusEdge = c
		literal = ""
	} else {
		c.edge = literal
		parent.children[literal] = c
	}
	t.nodes = append(t.nodes, c)
	if emit != nil {
		rec := make([]byte, 0, 10+len(literal))
		rec = append(rec, recordEdge)
		rec = binary.BigEndian.AppendUint32(rec, parent.id)
		rec = binary.BigEndian.AppendUint32(rec, c.id)
		rec = append(rec, boolByte(plus))
		rec = append(rec, literal...)
		emit(t.records, rec)
	}
	t.records++ // every edge is one record, emitted here or replayed
	return c
}

func (t *trie) markStreamLocked(n *node, emit func(uint32, []byte)) {
	n.stream = true
	n.streamSeq = t.records
	n.pattern = patternOf(n)
	t.pendingStreams = append(t.pendingStreams, n)
	if emit != nil {
		rec := binary.BigEndian.AppendUint32([]byte{recordStream}, n.id)
		emit(t.records, rec)
	}
	t.records++ // every stream is one record, emitted here or replayed
}

func patternOf(n *node) []string {
	p := make([]string, n.depth)
	for c := n; c.parent != nil; c = c.parent {
		if c.plus {
			p[c.depth-1] = "+"
		} else {
			p[c.depth-1] = c.edge
		}
	}
	return p
}

// commit makes everything learned since the last commit permanent and visible, and reports
// whether new streams appeared.
func (t *trie) commit() (newStreams bool) {
	newStreams, mark := t.commitPending()
	t.publish(mark)
	return newStreams
}

// publish makes the streams committed up to mark (a commitPending result) visible to readers.
func (t *trie) publish(mark uint32) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.visible = max(t.visible, mark)
}

// commitPending makes everything learned since the last commit permanent, so abort no longer
// undoes it, but leaves it invisible to readers until publish(mark).
func (t *trie) commitPending() (newStreams bool, mark uint32) {
	t.mu.Lock()
	defer t.mu.Unlock()
	newStreams = len(t.pendingStreams) > 0
	for _, n := range t.pendingStreams {
		n.committed = true
	}
	t.committedNodes = len(t.nodes)
	t.committedRecords = t.records
	t.pendingStreams = t.pendingStreams[:0]
	return newStreams, t.records
}

// abort forgets everything learned since the last commit.
func (t *trie) abort() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, n := range t.pendingStreams {
		n.stream = false
		n.pattern = nil
	}
	t.pendingStreams = t.pendingStreams[:0]
	for i := len(t.nodes) - 1; i >= t.committedNodes; i-- {
		n := t.nodes[i]
		if n.plus {
			n.parent.plusEdge = nil
		} else {
			delete(n.parent.children, n.edge)
		}
	}
	clear(t.nodes[t.committedNodes:])
	t.nodes = t.nodes[:t.committedNodes]
	t.records = t.committedRecords
}

// replay applies one persisted record; records must come in seq order.
func (t *trie) replay(seq uint32, rec []byte) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if seq != t.records {
		return fmt.Errorf("%w: trie record %d where %d was expected", ErrCorrupt, seq, t.records)
	}
	if len(rec) == 0 {
		return fmt.Errorf("%w: empty trie record %d", ErrCorrupt, seq)
	}
	switch rec[0] {
	case recordEdge:
		if len(rec) < 10 {
			return fmt.Errorf("%w: trie edge record %d of %d bytes", ErrCorrupt, seq, len(rec))
		}
		parent, child, plus := binary.BigEndian.Uint32(rec[1:]), binary.BigEndian.Uint32(rec[5:]), rec[9]
		if int(parent) >= len(t.nodes) || int(child) != len(t.nodes) || plus > 1 {
			return fmt.Errorf("%w: trie edge record %d: parent %d child %d plus %d with %d nodes",
				ErrCorrupt, seq, parent, child, plus, len(t.nodes))
		}
		p := t.nodes[parent]
		literal := string(rec[10:])
		if plus == 1 && (p.plusEdge != nil || literal != "") || plus == 0 && p.children[literal] != nil {
			return fmt.Errorf("%w: trie edge record %d duplicates an edge of node %d", ErrCorrupt, seq, parent)
		}
		t.addEdgeLocked(p, literal, plus == 1, nil)
	case recordStream:
		if len(rec) != 5 {
			return fmt.Errorf("%w: trie stream record %d of %d bytes", ErrCorrupt, seq, len(rec))
		}
		id := binary.BigEndian.Uint32(rec[1:])
		if int(id) >= len(t.nodes) || id <= sysRootNode || t.nodes[id].stream {
			return fmt.Errorf("%w: trie stream record %d names node %d", ErrCorrupt, seq, id)
		}
		t.markStreamLocked(t.nodes[id], nil)
		t.nodes[id].committed = true
	default:
		return fmt.Errorf("%w: trie record %d has kind %d", ErrCorrupt, seq, rec[0])
	}
	t.committedNodes = len(t.nodes)
	t.committedRecords = t.records
	t.visible = t.records // replayed records are on disk
	t.pendingStreams = t.pendingStreams[:0]
	return nil
}

// inheritFrom copies the '+' edges of prev, and the literal paths that lead to them, into the
// empty trie t, emitting records. Edges are visited in sorted order so that every replica gives
// the copied nodes the same IDs.
func (t *trie) inheritFrom(prev *trie, emit func(uint32, []byte)) {
	prev.mu.RLock()
	defer prev.mu.RUnlock()
	t.mu.Lock()
	defer t.mu.Unlock()
	var copyNode func(src, dst *node)
	copyNode = func(src, dst *node) {
		if src.plusEdge != nil {
			copyNode(src.plusEdge, t.addEdgeLocked(dst, "", true, emit))
		}
		keys := make([]string, 0, len(src.children))
		for k, c := range src.children {
			if hasPlus(c) {
				keys = append(keys, k)
			}
		}
		slices.Sort(keys)
		for _, k := range keys {
			copyNode(src.children[k], t.addEdgeLocked(dst, k, false, emit))
		}
	}
	copyNode(prev.nodes[rootNode], t.nodes[rootNode])
	copyNode(prev.nodes[sysRootNode], t.nodes[sysRootNode])
}

// hasPlus reports whether n or a node below it has a '+' edge.
func hasPlus(n *node) bool {
	if n.plusEdge != nil {
		return true
	}
	for _, c := range n.children {
		if hasPlus(c) {
			return true
		}
	}
	return false
}

// match returns the stream nodes whose pattern can match the filter levels, in ID order.
func (t *trie) match(filter []string) []*node {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if len(filter) == 0 {
		return nil
	}
	var out []*node
	var walk func(n *node, i int)
	var all func(n *node)
	all = func(n *node) {
		if n.id >= uint32(t.committedNodes) {
			return
		}
		if t.visibleLocked(n) {
			out = append(out, n)
		}
		for _, c := range n.children {
			all(c)
		}
		if n.plusEdge != nil {
			all(n.plusEdge)
		}
	}
	walk = func(n *node, i int) {
		if n.id >= uint32(t.committedNodes) {
			return
		}
		if i == len(filter) {
			if t.visibleLocked(n) {
				out = append(out, n)
			}
			return
		}
		switch f := filter[i]; f {
		case "#":
			all(n)
		case "+":
			for _, c := range n.children {
				walk(c, i+1)
			}
			if n.plusEdge != nil {
				walk(n.plusEdge, i+1)
			}
		default:
			if c := n.children[f]; c != nil {
				walk(c, i+1)
			}
			if n.plusEdge != nil {
				walk(n.plusEdge, i+1)
			}
		}
	}
	// MQTT 4.7.2: a first-level wildcard never matches a '$' topic, so only a literal first level
	// that begins with '$' enters the '$' root.
	walk(t.nodes[rootFor(filter)], 0)
	slices.SortFunc(out, func(a, b *node) int { return int(a.id) - int(b.id) })
	return out
}

// visibleLocked reports whether readers may see n as a stream. REQUIRES: t.mu held.
func (t *trie) visibleLocked(n *node) bool {
	return n.committed && n.streamSeq < t.visible
}

// stream returns the visible stream node with the given ID, or nil.
func (t *trie) stream(id uint64) *node {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if id >= uint64(t.committedNodes) {
		return nil
	}
	if n := t.nodes[id]; t.visibleLocked(n) {
		return n
	}
	return nil
}

// size returns the number of nodes and of streams.
func (t *trie) size() (nodes, streams int) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	for _, n := range t.nodes[:t.committedNodes] {
		if t.visibleLocked(n) {
			streams++
		}
	}
	return t.committedNodes, streams
}

// dump writes the trie as indented text, literal edges sorted, for tests and ds-info.
func (t *trie) dump(w *strings.Builder) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	var rec func(n *node, indent string)
	rec = func(n *node, indent string) {
		keys := make([]string, 0, len(n.children))
		for k := range n.children {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		line := func(c *node, label string) {
			fmt.Fprintf(w, "%s%s #%d", indent, label, c.id)
			if c.stream {
				w.WriteString(" *")
			}
			w.WriteByte('\n')
			rec(c, indent+"  ")
		}
		for _, k := range keys {
			line(n.children[k], fmt.Sprintf("%q", k))
		}
		if n.plusEdge != nil {
			line(n.plusEdge, "+")
		}
	}
	w.WriteString("root\n")
	rec(t.nodes[rootNode], "  ")
	w.WriteString("$root\n")
	rec(t.nodes[sysRootNode], "  ")
}

func boolByte(b bool) byte {
	if b {
		return 1
	}
	return 0
}
