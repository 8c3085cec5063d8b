package controller

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/usher-vm/usher/api"
)

func edKey(t *testing.T, comment string) string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp))) + " " + comment
}

func TestKeyStore(t *testing.T) {
	p := filepath.Join(t.TempDir(), "keys.json")
	k, err := LoadKeyStore(p, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	a1 := edKey(t, "alice@lap top: #1")
	rep, err := k.Serve("alice", api.KeysArgs{Action: api.KeysAdd, Key: a1})
	if err != nil || len(rep.Keys) != 1 {
		t.Fatalf("add: %v %+v", err, rep)
	}
	// the comment is made safe to write into a guest's configuration as is
	if c := rep.Keys[0].Comment; c != "alice@lap_top_1" || !strings.HasPrefix(rep.Keys[0].Fingerprint, "SHA256:") || rep.Keys[0].Type != "ssh-ed25519" {
		t.Errorf("described as %+v", rep.Keys[0])
	}
	if _, err := k.Serve("alice", api.KeysArgs{Action: api.KeysAdd, Key: a1}); !errors.Is(err, api.ErrBadRequest) || !strings.Contains(err.Error(), "already registered") {
		t.Errorf("duplicate: %v", err)
	}
	a2 := edKey(t, "work")
	if _, err := k.Serve("alice", api.KeysArgs{Action: api.KeysAdd, Key: a2}); err != nil {
		t.Fatal(err)
	}
	if got := strings.Split(k.Keys("alice"), "\n"); len(got) != 2 || got[1] != a2 {
		t.Errorf("VM data lines %q", got)
	}
	if k.Keys("bob") != "" {
		t.Error("bob has keys")
	}
	// Refusals: not a key, options, two keys, a private key.
	for _, bad := range []string{"hello", `no-pty ` + a2, a2 + "\n" + a1, "-----BEGIN OPENSSH PRIVATE KEY-----"} {
		if _, err := k.Serve("alice", api.KeysArgs{Action: api.KeysAdd, Key: bad}); !errors.Is(err, api.ErrBadRequest) {
			t.Errorf("%.30q accepted: %v", bad, err)
		}
	}
	// Keys survive a restart; removal by fingerprint, by comment, by the line.
	k, err = LoadKeyStore(p, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	rep, _ = k.Serve("alice", api.KeysArgs{Action: api.KeysList})
	if len(rep.Keys) != 2 {
		t.Fatalf("after reload: %+v", rep)
	}
	if rep, err = k.Serve("alice", api.KeysArgs{Action: api.KeysRemove, Key: rep.Keys[0].Fingerprint}); err != nil || len(rep.Keys) != 1 {
		t.Fatalf("remove by fingerprint: %v %+v", err, rep)
	}
	if _, err := k.Serve("alice", api.KeysArgs{Action: api.KeysRemove, Key: "nothing"}); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("remove of nothing: %v", err)
	}
	if rep, err = k.Serve("alice", api.KeysArgs{Action: api.KeysRemove, Key: "work"}); err != nil || len(rep.Keys) != 0 {
		t.Fatalf("remove by comment: %v %+v", err, rep)
	}

	// A user's keys must fit a VM's data.
	pk, err := rsa.GenerateKey(rand.Reader, 4096)
	if err != nil {
		t.Fatal(err)
	}
	added := 0
	for i := 0; i < 10; i++ {
		// distinct keys, cheaply: the same modulus, other exponents
		sp, kerr := ssh.NewPublicKey(&rsa.PublicKey{N: pk.N, E: 65537 + 2*i})
		if kerr != nil {
			t.Fatal(kerr)
		}
		_, err = k.Serve("carol", api.KeysArgs{Action: api.KeysAdd, Key: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp)))})
		if err != nil {
			break
		}
		added++
	}
	if err == nil || !strings.Contains(err.Error(), "at most 4096") || len(k.Keys("carol")) > api.MaxDataValue {
		t.Errorf("after %d RSA keys: %v (%d bytes)", added, err, len(k.Keys("carol")))
	}

	// A damaged file is moved aside; the controller starts with no keys.
	os.WriteFile(p, []byte(`{"alice": ["not a key"]}`), 0o600)
	k, err = LoadKeyStore(p, slog.Default())
	if err != nil || k.Keys("alice") != "" {
		t.Fatalf("damaged: %v %q", err, k.Keys("alice"))
	}
	if m, _ := filepath.Glob(p + ".damaged-*"); len(m) != 1 {
		t.Errorf("moved aside: %v", m)
	}
}
