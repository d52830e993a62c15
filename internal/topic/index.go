package topic

// Index maps topic filters to values and answers which filters match a topic name, at a cost
// that grows with the name's levels and the filters that match, not with the number of filters:
// the filters are kept in a trie of their levels, and a name walks its literal edge, the '+'
// edge and the '#' edge at each level.
//
// Match(name) returns the values of exactly the filters f with Match(f, name), the '$' rule
// included. The zero Index is empty and ready to use. An Index is not safe for concurrent use.
type Index[V any] struct {
	root indexNode[V]
	n    int
}

type indexNode[V any] struct {
	children map[string]*indexNode[V] // literal levels, "+" and "#"
	value    V
	has      bool // a filter ends here
}

// Len returns the number of filters in the index.
func (x *Index[V]) Len() int { return x.n }

// Get returns the value of filter.
func (x *Index[V]) Get(filter string) (V, bool) {
	n := &x.root
	for _, l := range Split(filter) {
		n = n.children[l]
		if n == nil {
			var zero V
			return zero, false
		}
	}
	return n.value, n.has
}

// Set sets the value of filter, adding the filter if it is not in the index. REQUIRES: filter is
// valid (ValidateFilter).
func (x *Index[V]) Set(filter string, v V) {
	n := &x.root
	for _, l := range Split(filter) {
		c := n.children[l]
		if c == nil {
			if n.children == nil {
				n.children = map[string]*indexNode[V]{}
			}
			c = &indexNode[V]{}
			n.children[l] = c
		}
		n = c
	}
	if !n.has {
		x.n++
	}
	n.value, n.has = v, true
}

// Delete removes filter and prunes the nodes it leaves empty.
func (x *Index[V]) Delete(filter string) {
	levels := Split(filter)
	path := make([]*indexNode[V], 0, len(levels)+1)
	n := &x.root
	path = append(path, n)
	for _, l := range levels {
		n = n.children[l]
		if n == nil {
			return
		}
		path = append(path, n)
	}
	if !n.has {
		return
	}
	var zero V
	n.value, n.has = zero, false
	x.n--
	for i := len(levels) - 1; i >= 0; i-- {
		c := path[i+1]
		if c.has || len(c.children) > 0 {
			break
		}
		delete(path[i].children, levels[i])
	}
}

// Match appends to out the values of the filters that match the topic name and returns it.
func (x *Index[V]) Match(name string, out []V) []V {
	if x.n == 0 {
		return out
	}
	levels := Split(name)
	if IsSystem(name) {
		// MQTT 4.7.2: wildcards at the first level do not match '$' names, so only the literal
		// edge of the root is followed.
		if c := x.root.children[levels[0]]; c != nil {
			return c.match(levels[1:], out)
		}
		return out
	}
	return x.root.match(levels, out)
}

// match appends the values of the filters below n that match the remaining levels.
func (n *indexNode[V]) match(levels []string, out []V) []V {
	if h := n.children["#"]; h != nil && h.has {
		out = append(out, h.value) // '#' matches the parent level too: "a/#" matches "a"
	}
	if len(levels) == 0 {
		if n.has {
			out = append(out, n.value)
		}
		return out
	}
	if c := n.children[levels[0]]; c != nil && levels[0] != "+" && levels[0] != "#" {
		out = c.match(levels[1:], out)
	}
	if c := n.children["+"]; c != nil {
		out = c.match(levels[1:], out)
	}
	return out
}
