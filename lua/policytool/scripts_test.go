package policytool

import (
	"bytes"
	"path/filepath"
	"testing"
)

// TestShippedPolicies runs the shipped scripts' fixture tests.
func TestShippedPolicies(t *testing.T) {
	var out bytes.Buffer
	passed, failed, err := RunTests(filepath.Join("..", "..", "scripts"), &out)
	t.Log("\n" + out.String())
	if err != nil || failed != 0 || passed == 0 {
		t.Fatalf("passed %d failed %d err %v", passed, failed, err)
	}
}

// TestCheckShippedPolicies validates every shipped script.
func TestCheckShippedPolicies(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join("..", "..", "scripts", "*.lua"))
	var scripts []string
	for _, f := range files {
		if !bytes.HasSuffix([]byte(f), []byte("_test.lua")) {
			scripts = append(scripts, f)
		}
	}
	if len(scripts) < 8 {
		t.Fatalf("expected the shipped scripts, found %v", scripts)
	}
	for _, err := range Check(scripts) {
		t.Error(err)
	}
}
