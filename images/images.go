package images

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/usher-vm/usher/api"
)

// MaxMeta bounds a metadata file.
const MaxMeta = 64 << 10

// ErrNoImage is wrapped by errors about an image the store does not hold.
var ErrNoImage = errors.New("no such image")

// Meta is an image's metadata file.
type Meta struct {
	Format      string `json:"format"` // "qcow2" or "raw"
	Description string `json:"description,omitempty"`
	MinMemMB    int    `json:"min_mem_mb,omitempty"`
	Kernel      string `json:"kernel,omitempty"` // relative to the store
	Initrd      string `json:"initrd,omitempty"`
	Cmdline     string `json:"cmdline,omitempty"`
}

// Image is a resolved image: absolute paths inside the store.
type Image struct {
	Name   string
	Path   string // the base image
	Kernel string // "" = boot from the disk
	Initrd string
	Meta
}

// Info describes the image for clients.
func (im *Image) Info() api.Image {
	boot := "disk"
	if im.Kernel != "" {
		boot = "kernel"
	}
	var size int64
	if st, err := os.Stat(im.Path); err == nil {
		size = st.Size()
	}
	return api.Image{Name: im.Name, Format: im.Format, Description: im.Description, MinMemMB: im.MinMemMB, Boot: boot, Bytes: size}
}

// Store is an image folder.
type Store struct{ Dir string }

// ValidName checks an image name: a DNS label (letters, digits, inner
// hyphens; at most 63), so that it names a file inside the store and
// nothing else.
func ValidName(name string) error {
	if err := api.ValidLabel(name); err != nil {
		return fmt.Errorf("image name %.40q: %v", name, err)
	}
	return nil
}

// Get resolves one image.
func (s Store) Get(name string) (*Image, error) {
	if s.Dir == "" {
		return nil, fmt.Errorf("image %q: %w (this node has no image store configured)", name, ErrNoImage)
	}
	if err := ValidName(name); err != nil {
		return nil, err
	}
	mp := filepath.Join(s.Dir, name+".json")
	f, err := os.Open(mp)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("image %q: %w in %s", name, ErrNoImage, s.Dir)
	}
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", name, err)
	}
	defer f.Close()
	var m Meta
	dec := json.NewDecoder(&limited{f, MaxMeta})
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("image %q: metadata %s: %w", name, mp, err)
	}
	im := &Image{Name: name, Meta: m}
	switch m.Format {
	case "qcow2", "raw":
	default:
		return nil, fmt.Errorf("image %q: metadata %s: format %q (want qcow2 or raw)", name, mp, m.Format)
	}
	if m.MinMemMB < 0 || m.MinMemMB > api.MaxMemMB {
		return nil, fmt.Errorf("image %q: metadata %s: min_mem_mb %d out of range", name, mp, m.MinMemMB)
	}
	im.Path = filepath.Join(s.Dir, name+"."+m.Format)
	if st, err := os.Stat(im.Path); err != nil || !st.Mode().IsRegular() {
		return nil, fmt.Errorf("image %q: %w: base file %s missing", name, ErrNoImage, im.Path)
	}
	if im.Kernel, err = s.inside(name, "kernel", m.Kernel); err != nil {
		return nil, err
	}
	if im.Initrd, err = s.inside(name, "initrd", m.Initrd); err != nil {
		return nil, err
	}
	if im.Initrd != "" && im.Kernel == "" {
		return nil, fmt.Errorf("image %q: an initrd needs a kernel", name)
	}
	return im, nil
}

// inside resolves a path of the metadata relative to the store, refusing
// anything outside it.
func (s Store) inside(name, field, rel string) (string, error) {
	if rel == "" {
		return "", nil
	}
	if filepath.IsAbs(rel) || !filepath.IsLocal(rel) {
		return "", fmt.Errorf("image %q: %s %q must be a path inside the store", name, field, rel)
	}
	p := filepath.Join(s.Dir, rel)
	if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() {
		return "", fmt.Errorf("image %q: %s %s missing", name, field, p)
	}
	return p, nil
}

// List returns every valid image, sorted by name, and one error per
// metadata file that does not describe a usable image.
func (s Store) List() ([]*Image, []error) {
	if s.Dir == "" {
		return nil, nil
	}
	ents, err := os.ReadDir(s.Dir)
	if err != nil {
		return nil, []error{fmt.Errorf("image store %s: %w", s.Dir, err)}
	}
	var out []*Image
	var errs []error
	for _, e := range ents {
		n, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || e.IsDir() {
			continue
		}
		im, err := s.Get(n)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, im)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, errs
}

// limited reads at most n bytes and then fails (io.LimitReader would end
// silently, letting a truncated file parse).
type limited struct {
	f interface{ Read([]byte) (int, error) }
	n int64
}

func (l *limited) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, fmt.Errorf("larger than %d bytes", MaxMeta)
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	k, err := l.f.Read(p)
	l.n -= int64(k)
	return k, err
}
