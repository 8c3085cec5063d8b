package usher

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestBenchSmoke runs every `usher bench` scenario at a small size so the
// harness cannot rot: each must finish without errors and write a JSON
// report with the documented keys.
func TestBenchSmoke(t *testing.T) {
	bin := usherBinary(t)
	for _, sc := range []struct {
		name string
		args []string
	}{
		{"start-storm", []string{"--lnms", "4", "--vms", "200", "--batch", "20", "--clients", "2", "--generators", "2"}},
		{"steady", []string{"--lnms", "3", "--vms", "30", "--duration", "2s", "--report-interval", "500ms"}},
		{"recovery", []string{"--lnms", "3", "--vms", "60", "--batch", "20"}},
		{"requests", []string{"--lnms", "3", "--duration", "2s", "--rate", "50", "--clients", "2"}},
		{"chain", []string{"--duration", "1s"}},
		{"reload", []string{"--lnms", "2", "--duration", "2s", "--rate", "40", "--clients", "2"}},
	} {
		t.Run(sc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "report.json")
			args := append([]string{"bench", "--scenario", sc.name, "--quiet", "--json", out}, sc.args...)
			cmd := exec.Command(bin, args...)
			b, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("usher %v: %v\n%s", args, err, b)
			}
			raw, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			var rep map[string]any
			if err := json.Unmarshal(raw, &rep); err != nil {
				t.Fatal(err)
			}
			for _, k := range []string{"scenario", "lnms", "vms", "seconds", "throughput_per_s", "p50_ms", "p99_ms",
				"controller_cpu_seconds", "controller_peak_rss_bytes", "errors"} {
				if _, ok := rep[k]; !ok {
					t.Errorf("report lacks %q: %s", k, raw)
				}
			}
			if rep["errors"].(float64) != 0 || rep["seconds"].(float64) <= 0 {
				t.Fatalf("report: %s", raw)
			}
		})
	}
}
