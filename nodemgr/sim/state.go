package sim

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/usher-vm/usher/api"

	"github.com/usher-vm/usher/nodemgr"
)

// fileState is the JSON layout of a state file.
type fileState struct {
	Version int         `json:"version"`
	Node    string      `json:"node,omitempty"`
	CPUs    int         `json:"cpus,omitempty"`   // node capacity, so Inject can check it
	MemMB   int         `json:"mem_mb,omitempty"` // node capacity
	Guests  []fileGuest `json:"guests"`
}

type fileGuest struct {
	Name     string            `json:"name"`
	State    api.VMState       `json:"state"`
	Reason   string            `json:"reason,omitempty"`
	MemMB    int               `json:"mem_mb"`
	VCPUs    int               `json:"vcpus"`
	Data     map[string]string `json:"data,omitempty"`
	Incoming bool              `json:"incoming,omitempty"`
}

// fileID identifies one version of the state file without reading it.
// Writers from this package also bump a generation counter kept in the lock
// file, which catches changes the stat fields could miss (same inode number
// reused, same size, same timestamp tick); the stat fields catch edits made
// by hand.
type fileID struct {
	gen   uint64
	ino   uint64
	size  int64
	mtime int64
}

// stateFile is a state file plus its open sibling lock file.
type stateFile struct {
	path string
	lk   *os.File // "<path>.lock", flocked around every read and write
	last fileID   // version last read or written by the owning Hypervisor
}

func openStateFile(path string) (*stateFile, error) {
	lk, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("sim: state lock: %w", err)
	}
	return &stateFile{path: path, lk: lk}, nil
}

func (f *stateFile) close() error { return f.lk.Close() }

// lock takes the file lock, exclusive for writers, and returns its release.
// flock locks belong to the open file, so one stateFile must not be locked
// by two goroutines at once; Hypervisor serialises with its mutex.
func (f *stateFile) lock(exclusive bool) (func(), error) {
	if err := flock(f.lk, exclusive); err != nil {
		return nil, fmt.Errorf("sim: locking %s.lock: %w", f.path, err)
	}
	return func() { funlock(f.lk) }, nil
}

func (f *stateFile) stat() (fileID, error) {
	fi, err := os.Stat(f.path)
	if err != nil {
		return fileID{}, fmt.Errorf("sim: state file: %w", err)
	}
	return f.idOf(fi)
}

func (f *stateFile) idOf(fi fs.FileInfo) (fileID, error) {
	gen, err := f.gen()
	return fileID{gen: gen, ino: fileIno(fi), size: fi.Size(), mtime: fi.ModTime().UnixNano()}, err
}

// gen reads the generation counter (0 in a new lock file).
func (f *stateFile) gen() (uint64, error) {
	var b [8]byte
	n, err := f.lk.ReadAt(b[:], 0)
	if n < len(b) {
		if err == io.EOF {
			err = nil
		}
		return 0, err
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

func (f *stateFile) bumpGen() error {
	g, err := f.gen()
	if err != nil {
		return err
	}
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], g+1)
	_, err = f.lk.WriteAt(b[:], 0)
	return err
}

// read parses the state file; a missing file is an empty state with a zero
// ID. Caller holds the lock.
func (f *stateFile) read() (*fileState, fileID, error) {
	fh, err := os.Open(f.path)
	if errors.Is(err, fs.ErrNotExist) {
		return &fileState{Version: 1}, fileID{}, nil
	}
	if err != nil {
		return nil, fileID{}, fmt.Errorf("sim: state file: %w", err)
	}
	defer fh.Close()
	fi, err := fh.Stat()
	if err != nil {
		return nil, fileID{}, fmt.Errorf("sim: state file: %w", err)
	}
	id, err := f.idOf(fi)
	if err != nil {
		return nil, fileID{}, fmt.Errorf("sim: state lock: %w", err)
	}
	var st fileState
	if err := json.NewDecoder(fh).Decode(&st); err != nil {
		return nil, fileID{}, fmt.Errorf("sim: state file %s: %w", f.path, err)
	}
	if st.Version != 1 {
		return nil, fileID{}, fmt.Errorf("sim: state file %s: unsupported version %d", f.path, st.Version)
	}
	for _, d := range st.Guests {
		if d.Name == "" {
			return nil, fileID{}, fmt.Errorf("sim: state file %s: guest without a name", f.path)
		}
	}
	return &st, id, nil
}

// write replaces the state file atomically (temporary file + rename) and
// returns the new version's ID. Caller holds the exclusive lock.
func (f *stateFile) write(st *fileState) (fileID, error) {
	slices.SortFunc(st.Guests, func(a, b fileGuest) int { return strings.Compare(a.Name, b.Name) })
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fileID{}, err
	}
	b = append(b, '\n')
	tmp, err := os.CreateTemp(filepath.Dir(f.path), filepath.Base(f.path)+".tmp*")
	if err != nil {
		return fileID{}, err
	}
	_, werr := tmp.Write(b)
	var fi fs.FileInfo
	if werr == nil {
		fi, werr = tmp.Stat()
	}
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Chmod(tmp.Name(), 0o644)
	}
	if werr == nil {
		werr = os.Rename(tmp.Name(), f.path)
	}
	if werr != nil {
		os.Remove(tmp.Name())
		return fileID{}, werr
	}
	if err := f.bumpGen(); err != nil {
		return fileID{}, err
	}
	// The rename keeps inode, size and mtime, so the temp file's stat is
	// the new version's identity.
	return f.idOf(fi)
}

// Inject changes the state file of a (possibly running, possibly other
// process's) simulated hypervisor, the way something outside Usher would
// change a real hypervisor. action is "crash" (running or paused guest →
// crashed), "vanish" (guest removed) or "appear" (a running guest of
// 1024 MiB and 1 vCPU is created; see AppearIn for other sizes). The
// Hypervisor using the file notices on its next call and emits events.
func Inject(stateFile, action, name string) error {
	switch action {
	case "appear":
		return AppearIn(stateFile, nodemgr.Spec{Name: name, MemMB: 1024, VCPUs: 1})
	case "crash", "vanish":
	default:
		return fmt.Errorf("sim: unknown injection %q (valid: crash, vanish, appear)", action)
	}
	return editStateFile(stateFile, func(st *fileState) error {
		i := slices.IndexFunc(st.Guests, func(d fileGuest) bool { return d.Name == name })
		if i < 0 {
			return noSuch(name)
		}
		if action == "vanish" {
			st.Guests = slices.Delete(st.Guests, i, i+1)
			return nil
		}
		d := &st.Guests[i]
		if !consumes(d.State) {
			return &TransitionError{Name: name, Op: "crash", State: d.State}
		}
		d.State, d.Reason = api.StateCrashed, "crashed"
		return nil
	})
}

// AppearIn adds a running guest to a state file from outside Usher,
// refusing it if the node's recorded capacity would be exceeded.
func AppearIn(stateFile string, spec nodemgr.Spec) error {
	if err := validSpec(spec); err != nil {
		return err
	}
	return editStateFile(stateFile, func(st *fileState) error {
		mem, cpu := 0, 0
		for _, d := range st.Guests {
			if d.Name == spec.Name {
				return fmt.Errorf("%w: %q", ErrExists, spec.Name)
			}
			if consumes(d.State) {
				mem += d.MemMB
				cpu += d.VCPUs
			}
		}
		if st.MemMB > 0 && st.CPUs > 0 {
			e := &CapacityError{Node: st.Node, FreeMemMB: st.MemMB - mem, NeedMemMB: spec.MemMB,
				FreeVCPUs: st.CPUs - cpu, NeedVCPUs: spec.VCPUs}
			e.ShortMem, e.ShortVCPUs = e.NeedMemMB > e.FreeMemMB, e.NeedVCPUs > e.FreeVCPUs
			if e.ShortMem || e.ShortVCPUs {
				return e
			}
		}
		st.Guests = append(st.Guests, fileGuest{Name: spec.Name, State: api.StateRunning,
			Reason: "appeared", MemMB: spec.MemMB, VCPUs: spec.VCPUs, Data: copyMap(spec.Data)})
		return nil
	})
}

// editStateFile applies fn to the state file under its exclusive lock.
func editStateFile(path string, fn func(*fileState) error) error {
	f, err := openStateFile(path)
	if err != nil {
		return err
	}
	defer f.close()
	unlock, err := f.lock(true)
	if err != nil {
		return err
	}
	defer unlock()
	st, _, err := f.read()
	if err != nil {
		return err
	}
	if err := fn(st); err != nil {
		return err
	}
	_, err = f.write(st)
	return err
}
