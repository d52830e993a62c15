package topic

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestIndexMatchesLikeMatch checks Index against Match over random filters and names from a
// small alphabet (so that they collide), with filters added and deleted along the way.
func TestIndexMatchesLikeMatch(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	words := []string{"a", "b", "$s", ""}
	randLevels := func(wild bool) []string {
		n := 1 + rng.IntN(4)
		var ls []string
		for i := 0; i < n; i++ {
			switch r := rng.IntN(10); {
			case wild && r == 0 && i == n-1:
				ls = append(ls, "#")
			case wild && r < 3:
				ls = append(ls, "+")
			default:
				w := words[rng.IntN(len(words))]
				if w == "$s" && i > 0 {
					w = "s"
				}
				ls = append(ls, w)
			}
		}
		return ls
	}
	for round := 0; round < 200; round++ {
		var x Index[string]
		set := map[string]bool{}
		for i := 0; i < 30; i++ {
			f := strings.Join(randLevels(true), "/")
			if ValidateFilter(f) != nil {
				continue
			}
			if rng.IntN(4) == 0 && len(set) > 0 {
				for g := range set {
					x.Delete(g)
					delete(set, g)
					break
				}
			}
			x.Set(f, f)
			set[f] = true
		}
		require.Equal(t, len(set), x.Len(), "Len")
		for i := 0; i < 50; i++ {
			name := strings.Join(randLevels(false), "/")
			if ValidateName(name) != nil {
				continue
			}
			requireMatches(t, &x, set, name)
		}
		for f := range set {
			v, ok := x.Get(f)
			require.True(t, ok, "Get(%q) = %q, %v", f, v, ok)
			require.Equal(t, f, v, "Get(%q)", f)
			x.Delete(f)
		}
		require.Zero(t, x.Len(), "Len after deleting every filter")
		require.Empty(t, x.root.children, "root children after deleting every filter")
	}
}

// FuzzIndex checks Index.Match against Match for the valid filters among the lines of filters
// and a valid name.
func FuzzIndex(f *testing.F) {
	f.Add("a/+\n#\n+/b/#\n$s/x", "a/b")
	f.Add("+\n$s/#", "$s/x")
	f.Fuzz(func(t *testing.T, filters, name string) {
		if ValidateName(name) != nil {
			return
		}
		var x Index[string]
		set := map[string]bool{}
		for _, fl := range strings.Split(filters, "\n") {
			if ValidateFilter(fl) == nil {
				x.Set(fl, fl)
				set[fl] = true
			}
		}
		requireMatches(t, &x, set, name)
	})
}

// requireMatches checks that x, which maps each filter of set to itself, matches name with
// exactly the filters of set that Match says match it.
func requireMatches(t *testing.T, x *Index[string], set map[string]bool, name string) {
	t.Helper()
	var want []string
	for f := range set {
		if Match(f, name) {
			want = append(want, f)
		}
	}
	got := x.Match(name, nil)
	slices.Sort(got)
	slices.Sort(want)
	require.True(t, slices.Equal(got, want), "Match(%q) = %q, want %q (filters %v)", name, got, want, set)
}
