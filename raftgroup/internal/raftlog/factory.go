package raftlog

import (
	"path/filepath"

	"github.com/lni/dragonboat/v4/config"
	"github.com/lni/dragonboat/v4/raftio"
)

// Factory opens a Log for dragonboat (config.NodeHostConfig.Expert.LogDBFactory), in a
// "raftlog" directory inside the NodeHost's LogDB directory.
type Factory struct {
	Options Options
	// Opened, if set, is called with the log opened, e.g. to read its Stats later.
	Opened func(*Log)
}

// Name implements config.LogDBFactory.
func (f Factory) Name() string { return Name }

// Create implements config.LogDBFactory.
func (f Factory) Create(_ config.NodeHostConfig, _ config.LogDBCallback, dirs, _ []string) (raftio.ILogDB, error) {
	l, err := Open(filepath.Join(dirs[0], "raftlog"), f.Options)
	if err != nil {
		return nil, err
	}
	if f.Opened != nil {
		f.Opened(l)
	}
	return l, nil
}

var _ config.LogDBFactory = Factory{}
