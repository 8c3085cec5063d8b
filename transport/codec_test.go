package transport

import (
	"maps"
	"runtime"
	"testing"

	"github.com/usher-vm/usher/api"
)

// TestStringMapDecodesSmall: string maps on the wire (VM data, event
// details, request arguments) decode to what was sent, and into maps sized
// to their content: the codec's own map[string]string costs about 5 KiB
// each, whatever it holds.
func TestStringMapDecodesSmall(t *testing.T) {
	in := []byte(`{"type":"vm_state_changed","vm":{"name":"web1.alice.usher.test","data":{"ip":"10.0.0.5","vlan":"7"}},"detail":{"adopted":"true"}}`)
	var ev api.Event
	if err := Unmarshal(in, &ev); err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(ev.Detail, api.StringMap{"adopted": "true"}) || !maps.Equal(ev.VM.Data, api.StringMap{"ip": "10.0.0.5", "vlan": "7"}) {
		t.Fatalf("decoded %+v / %+v", ev.Detail, ev.VM.Data)
	}
	for _, tc := range []struct{ in, err string }{
		{`{"detail":null}`, ""},
		{`{"detail":{}}`, ""},
		{`{"detail":{"a":1}}`, "number"},
		{`{"detail":[]}`, "array"},
	} {
		var ev api.Event
		err := Unmarshal([]byte(tc.in), &ev)
		if (err != nil) != (tc.err != "") {
			t.Fatalf("%s: error %v, want one mentioning %q", tc.in, err, tc.err)
		}
	}
	const n = 2000
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range n {
		var ev api.Event
		if err := Unmarshal(in, &ev); err != nil {
			t.Fatal(err)
		}
	}
	runtime.ReadMemStats(&after)
	if per := (after.TotalAlloc - before.TotalAlloc) / n; per > 4096 {
		t.Fatalf("decoding an event with two small string maps allocates %d bytes, want under 4 KiB (a plain map[string]string alone takes 5)", per)
	}
}

// FuzzStringMap: a StringMap decodes exactly as a map[string]string does
// (the same maps, an error for the same inputs).
func FuzzStringMap(f *testing.F) {
	for _, s := range []string{`{"a":"b"}`, `null`, `{}`, `{"a":"\u00e9","a":"c"}`, `{"a":1}`, `[]`, `"x"`, `{"a":"b"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var plain struct {
			M map[string]string `json:"m"`
		}
		var ours struct {
			M api.StringMap `json:"m"`
		}
		doc := append(append([]byte(`{"m":`), b...), '}')
		e1, e2 := Unmarshal(doc, &plain), Unmarshal(doc, &ours)
		if (e1 == nil) != (e2 == nil) {
			t.Fatalf("%q: map[string]string error %v, StringMap error %v", b, e1, e2)
		}
		if e1 == nil && !maps.Equal(plain.M, map[string]string(ours.M)) {
			t.Fatalf("%q: map[string]string %v, StringMap %v", b, plain.M, ours.M)
		}
	})
}
