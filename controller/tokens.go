package controller

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/usher-vm/usher/api"
)

// TokenStore keeps API tokens: the HTTP API takes "Authorization: Bearer
// usher_<id>_<secret>" as the identity the token was made for (user,
// groups, admin flag as the authentication chain gave them then). Only a
// SHA-256 of each token is kept, in one JSON file (0600) rewritten
// atomically on every change; the secret is shown once, when made.
type TokenStore struct {
	blob Blob
	now  func() time.Time
	mu   sync.Mutex
	list []storedToken
}

type storedToken struct {
	api.Token
	Groups []string `json:"groups,omitempty"`
	Hash   string   `json:"hash"` // hex SHA-256 of the whole token
}

const tokenPrefix = "usher_"

// LoadTokenStore reads the file (missing: no tokens). A damaged file is
// moved aside with a loud log line (its tokens stop working).
func LoadTokenStore(path string, log *slog.Logger) (*TokenStore, error) {
	return LoadTokenStoreFrom(FileBlob(path), log)
}

// LoadTokenStoreFrom is LoadTokenStore from any Blob.
func LoadTokenStoreFrom(blob Blob, log *slog.Logger) (*TokenStore, error) {
	path := blob.Name()
	t := &TokenStore{blob: blob, now: time.Now}
	b, err := blob.Read()
	if err == nil && b == nil {
		return t, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading API tokens: %w", err)
	}
	var list []storedToken
	err = json.Unmarshal(b, &list)
	for _, st := range list {
		if err == nil && (api.ValidLabel(st.User) != nil || len(st.Hash) != 64 || st.ID == "") {
			err = fmt.Errorf("token %q of %q is malformed", st.ID, st.User)
		}
	}
	if err != nil {
		aside, merr := blob.Aside()
		if merr != nil {
			return nil, fmt.Errorf("API tokens %s are damaged (%v) and could not be moved aside: %w", path, err, merr)
		}
		log.Error("API token file damaged: moved aside, every token is void", "file", path, "moved_to", aside, "err", err)
		return t, nil
	}
	t.list = list
	return t, nil
}

func hashToken(tok string) string {
	h := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(h[:])
}

// Identity returns whom a token stands for; an unknown, revoked or
// expired token is unauthorized.
func (t *TokenStore) Identity(tok string) (api.Identity, error) {
	rest, ok := strings.CutPrefix(tok, tokenPrefix)
	id, _, ok2 := strings.Cut(rest, "_")
	if !ok || !ok2 || len(tok) > 128 {
		return api.Identity{}, api.Errorf(api.ErrUnauthorized, "not an Usher API token")
	}
	want := hashToken(tok)
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, st := range t.list {
		if st.ID != id {
			continue
		}
		if subtle.ConstantTimeCompare([]byte(st.Hash), []byte(want)) != 1 {
			break
		}
		if !st.Expires.IsZero() && t.now().After(st.Expires) {
			return api.Identity{}, api.Errorf(api.ErrUnauthorized, "API token %s expired at %s", st.ID, st.Expires.Format(time.RFC3339))
		}
		return api.Identity{User: st.User, Groups: st.Groups, Admin: st.Admin}, nil
	}
	return api.Identity{}, api.Errorf(api.ErrUnauthorized, "unknown or revoked API token")
}

// Serve runs a tokens call for caller on behalf of user (the caller, or
// another user for an admin's list and revoke).
func (t *TokenStore) Serve(caller api.Identity, user string, a api.TokensArgs) (api.TokensReply, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	rep := api.TokensReply{User: user}
	switch a.Action {
	case api.TokensCreate:
		n := 0
		for _, st := range t.list {
			if st.User == user {
				n++
			}
		}
		if n >= api.MaxTokens {
			return rep, api.Errorf(api.ErrBadRequest, "tokens create: %s has %d tokens (at most %d); revoke one first", user, n, api.MaxTokens)
		}
		idb, secret := make([]byte, 6), make([]byte, 32)
		rand.Read(idb)
		rand.Read(secret)
		id := hex.EncodeToString(idb)
		tok := tokenPrefix + id + "_" + base64.RawURLEncoding.EncodeToString(secret)
		st := storedToken{Token: api.Token{ID: id, Name: a.Name, User: user, Admin: caller.Admin, Created: t.now().UTC().Truncate(time.Second)},
			Groups: caller.Groups, Hash: hashToken(tok)}
		if a.Expires != "" {
			d, _ := time.ParseDuration(a.Expires) // validated
			st.Expires = st.Created.Add(d)
		}
		if err := t.saveLocked(append(append([]storedToken(nil), t.list...), st)); err != nil {
			return rep, err
		}
		rep.Secret = tok
	case api.TokensRevoke:
		var next []storedToken
		for _, st := range t.list {
			if !(st.User == user && st.ID == a.ID) {
				next = append(next, st)
			}
		}
		if len(next) == len(t.list) {
			return rep, api.Errorf(api.ErrNotFound, "tokens revoke: %s has no token %q", user, a.ID)
		}
		if err := t.saveLocked(next); err != nil {
			return rep, err
		}
	}
	rep.Tokens = []api.Token{}
	for _, st := range t.list {
		if st.User == user {
			rep.Tokens = append(rep.Tokens, st.Token)
		}
	}
	sort.Slice(rep.Tokens, func(i, j int) bool { return rep.Tokens[i].Created.Before(rep.Tokens[j].Created) })
	return rep, nil
}

func (t *TokenStore) saveLocked(list []storedToken) error {
	b, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return err
	}
	if err := t.blob.Write(append(b, '\n')); err != nil {
		return api.Errorf(api.ErrInternal, "saving API tokens: %v", err)
	}
	t.list = list
	return nil
}
