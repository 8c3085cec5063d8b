package controller

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/usher-vm/usher/api"
)

func TestTokenStore(t *testing.T) {
	p := filepath.Join(t.TempDir(), "tokens.json")
	ts, err := LoadTokenStore(p, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	alice := api.Identity{User: "alice", Groups: []string{"ml"}}
	rep, err := ts.Serve(alice, "alice", api.TokensArgs{Action: api.TokensCreate, Name: "ci", Expires: "1h"})
	if err != nil || !strings.HasPrefix(rep.Secret, "usher_") || len(rep.Tokens) != 1 || rep.Tokens[0].Expires.IsZero() {
		t.Fatalf("create: %v %+v", err, rep)
	}
	secret := rep.Secret
	if id, err := ts.Identity(secret); err != nil || id.User != "alice" || len(id.Groups) != 1 || id.Admin {
		t.Fatalf("identity: %+v %v", id, err)
	}
	// Only a hash is kept.
	if b, _ := os.ReadFile(p); strings.Contains(string(b), secret[len(secret)-20:]) {
		t.Fatal("the token's secret is in the file")
	}
	// One character changed (not to itself: the secret may end in "A").
	changed := secret[:len(secret)-1] + "A"
	if changed == secret {
		changed = secret[:len(secret)-1] + "B"
	}
	for _, bad := range []string{"", "usher_", secret + "x", changed, "Bearer " + secret, strings.Repeat("a", 500)} {
		if _, err := ts.Identity(bad); !errors.Is(err, api.ErrUnauthorized) {
			t.Errorf("%.30q accepted: %v", bad, err)
		}
	}
	// Survives a restart; expires; revoked.
	ts, err = LoadTokenStore(p, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ts.Identity(secret); err != nil {
		t.Fatalf("after reload: %v", err)
	}
	ts.now = func() time.Time { return time.Now().Add(2 * time.Hour) }
	if _, err := ts.Identity(secret); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("expired token: %v", err)
	}
	ts.now = time.Now
	if _, err := ts.Serve(alice, "alice", api.TokensArgs{Action: api.TokensRevoke, ID: "nope"}); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("revoke of nothing: %v", err)
	}
	if rep, err := ts.Serve(alice, "alice", api.TokensArgs{Action: api.TokensRevoke, ID: rep.Tokens[0].ID}); err != nil || len(rep.Tokens) != 0 {
		t.Fatalf("revoke: %v %+v", err, rep)
	}
	if _, err := ts.Identity(secret); !errors.Is(err, api.ErrUnauthorized) {
		t.Errorf("revoked token works: %v", err)
	}
	// At most MaxTokens per user.
	for i := 0; i < api.MaxTokens; i++ {
		if _, err := ts.Serve(alice, "alice", api.TokensArgs{Action: api.TokensCreate}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ts.Serve(alice, "alice", api.TokensArgs{Action: api.TokensCreate}); !errors.Is(err, api.ErrBadRequest) {
		t.Errorf("token %d: %v", api.MaxTokens+1, err)
	}
	// A damaged file voids every token, loudly; the controller starts.
	os.WriteFile(p, []byte(`[{"id":"x","user":"Bad User","hash":"00"}]`), 0o600)
	if ts, err = LoadTokenStore(p, slog.Default()); err != nil || len(ts.list) != 0 {
		t.Fatalf("damaged: %v", err)
	}
}
