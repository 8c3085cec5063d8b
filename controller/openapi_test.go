package controller

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite docs/openapi.json")

// The checked-in OpenAPI document is the one the routes make; every route
// has a summary, every operation an answer, every $ref a schema.
func TestOpenAPIDocument(t *testing.T) {
	b, err := OpenAPI()
	if err != nil {
		t.Fatal(err)
	}
	const file = "../docs/openapi.json"
	if *update {
		if err := os.WriteFile(file, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	have, err := os.ReadFile(file)
	if err != nil || !bytes.Equal(have, b) {
		t.Fatalf("docs/openapi.json differs from the routes' document (%v): go test ./controller -run OpenAPI -update", err)
	}
	var doc struct {
		Paths      map[string]map[string]map[string]any `json:"paths"`
		Components struct {
			Schemas map[string]any `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	h := &httpAPI{}
	h.routes()
	if len(doc.Paths) == 0 || len(h.docs) < 20 {
		t.Fatalf("%d paths, %d routes", len(doc.Paths), len(h.docs))
	}
	for _, r := range h.docs {
		op := doc.Paths[r.path][strings.ToLower(r.method)]
		if op == nil || op["summary"] == "" || op["responses"] == nil {
			t.Errorf("%s %s: %v", r.method, r.path, op)
		}
	}
	for _, ref := range strings.Split(string(b), `"$ref": "#/components/schemas/`)[1:] {
		name := ref[:strings.IndexByte(ref, '"')]
		if doc.Components.Schemas[name] == nil {
			t.Errorf("$ref to %s, which has no schema", name)
		}
	}
}
