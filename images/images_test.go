package images

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestStore(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("deb.qcow2", "qcow")
	write("vmlinuz", "k")
	write("deb.json", `{"format":"qcow2","description":"Debian","kernel":"vmlinuz","cmdline":"root=/dev/vda","min_mem_mb":256}`)
	write("disk.raw", "raw")
	write("disk.json", `{"format":"raw"}`)
	write("nobase.json", `{"format":"qcow2"}`)
	write("odd.json", `{"format":"vmdk"}`)
	write("extra.json", `{"format":"raw","colour":"blue"}`)
	write("extra.raw", "x")
	write("out.json", `{"format":"raw","kernel":"../etc/passwd"}`)
	write("out.raw", "x")
	write("abs.json", `{"format":"raw","kernel":"/etc/passwd"}`)
	write("abs.raw", "x")
	write("big.json", `{"format":"raw","description":"`+strings.Repeat("x", MaxMeta)+`"}`)
	write("big.raw", "x")
	write("initonly.json", `{"format":"raw","initrd":"vmlinuz"}`)
	write("initonly.raw", "x")
	write("Bad_Name.json", `{"format":"raw"}`)

	s := Store{Dir: dir}
	list, errs := s.List()
	var names []string
	for _, im := range list {
		names = append(names, im.Name)
	}
	if strings.Join(names, ",") != "deb,disk" {
		t.Errorf("listed %v", names)
	}
	if len(errs) != 8 {
		t.Errorf("%d problems, want 8: %v", len(errs), errs)
	}
	deb, err := s.Get("deb")
	if err != nil {
		t.Fatal(err)
	}
	if deb.Kernel != filepath.Join(dir, "vmlinuz") || deb.Path != filepath.Join(dir, "deb.qcow2") || deb.Info().Boot != "kernel" || deb.Info().Bytes != 4 || deb.Info().MinMemMB != 256 {
		t.Errorf("deb: %+v %+v", deb, deb.Info())
	}
	if disk, _ := s.Get("disk"); disk.Info().Boot != "disk" {
		t.Errorf("disk boots %q", disk.Info().Boot)
	}
	for name, want := range map[string]string{
		"missing": "no such image", "../deb": "image name", "/etc/passwd": "image name", "": "image name",
		"nobase": "base file", "odd": "format", "extra": "unknown field", "out": "inside the store", "abs": "inside the store",
		"big": "larger than", "initonly": "needs a kernel",
	} {
		if _, err := s.Get(name); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Get(%q): %v, want %q", name, err, want)
		}
	}
	if _, err := s.Get("missing"); !errors.Is(err, ErrNoImage) {
		t.Errorf("missing is not ErrNoImage: %v", err)
	}
	if _, err := (Store{}).Get("deb"); !errors.Is(err, ErrNoImage) || !strings.Contains(err.Error(), "no image store") {
		t.Errorf("no store: %v", err)
	}
	if l, e := (Store{}).List(); l != nil || e != nil {
		t.Errorf("no store lists %v %v", l, e)
	}
}
