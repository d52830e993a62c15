package ds

// OpenEmbedded opens the embedded storage that Open builds a DB on, in dir, as a bare Backend,
// so that the tests of OpenBackend run over real Pebble. opts is prepared as Open prepares it.
func OpenEmbedded(dir string, opts *Options) (Backend, error) {
	opts, err := prepareOptions(opts)
	if err != nil {
		return nil, err
	}
	e, err := openEmbedded(dir, opts)
	if err != nil {
		return nil, err // not e: a nil *embedded in a Backend would not be nil
	}
	return e, nil
}
