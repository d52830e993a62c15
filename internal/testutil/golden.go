package testutil

import "flag"

// rewrite is the -rewrite flag of every test binary that imports this package: golden and
// data-driven files (internal/datadriven) are rewritten with the actual output instead of
// compared with it. One flag for the repository: two packages defining their own would make
// a test binary that links both panic ("flag redefined").
var rewrite = flag.Bool("rewrite", false, "rewrite golden and data-driven expected files with the actual output")

// Rewriting reports whether the test binary runs with -rewrite: review the diff afterwards.
func Rewriting() bool { return *rewrite }
