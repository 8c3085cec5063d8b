package controller

import (
	"encoding/json"
	"net/http"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/usher-vm/usher/api"
)

// The HTTP API's routes are registered with their documentation
// (h.route), and the OpenAPI document is built from that same table
// (OpenAPI), with JSON schemas made from the Go types by reflection: the
// document cannot drift from the handlers. The controller serves it at
// /api/v1/openapi.json; docs/openapi.json is the same document, checked
// by a test.

// routeDoc documents one route.
type routeDoc struct {
	Summary string
	Query   []string // query parameters
	Body    any      // zero value of the request body's type (nil: none)
	Reply   any      // zero value of the answer's type (nil: not JSON)
}

type docRoute struct {
	method, path string
	routeDoc
}

// Bodies and answers that have no api type of their own.
type (
	nodeModeBody struct {
		Reason string `json:"reason,omitempty"`
	}
	opList struct {
		Operations []api.Operation `json:"operations"`
	}
	actionBody struct {
		ID    string            `json:"id,omitempty"`
		Args  map[string]string `json:"args,omitempty"`
		Force bool              `json:"force,omitempty"`
		LNMs  []string          `json:"lnms,omitempty"`
	}
	keyBody struct {
		Key string `json:"key"`
	}
	tokenBody struct {
		Name    string `json:"name,omitempty"`
		Expires string `json:"expires,omitempty"`
	}
	errorBody struct {
		Error api.Error `json:"error"`
	}
)

// route registers an authenticated route and records its documentation.
func (h *httpAPI) route(m *http.ServeMux, pattern string, d routeDoc, f handlerFunc) {
	m.HandleFunc(pattern, h.authed(f))
	method, path, _ := strings.Cut(pattern, " ")
	h.docs = append(h.docs, docRoute{method, path, d})
}

var queryHelp = map[string]string{
	"all": "everyone's (admins)", "cluster": "one virtual cluster", "status": "with usage averages",
	"lists": "with the lost, missing and unmanaged lists (admins)", "vms": "a VM set: names, ranges, /regex/, @cluster",
	"async": "1: answer at once with an operation (202)", "timeout": "how long to wait (a duration, up to 10m)",
	"user": "another user's (admins)", "after": "resume after this event number (as Last-Event-ID)",
}

var pathParam = regexp.MustCompile(`\{(\w+)\}`)

// OpenAPI builds the HTTP API's OpenAPI 3.1 document.
func OpenAPI() ([]byte, error) {
	h := &httpAPI{}
	h.routes()
	schemas := map[string]any{}
	paths := map[string]map[string]any{}
	for _, r := range h.docs {
		op := map[string]any{"summary": r.Summary, "security": []map[string][]string{{"basic": {}}, {"token": {}}}}
		var params []map[string]any
		for _, m := range pathParam.FindAllStringSubmatch(r.path, -1) {
			params = append(params, map[string]any{"name": m[1], "in": "path", "required": true, "schema": map[string]string{"type": "string"}})
		}
		for _, q := range r.Query {
			params = append(params, map[string]any{"name": q, "in": "query", "description": queryHelp[q], "schema": map[string]string{"type": "string"}})
		}
		if params != nil {
			op["parameters"] = params
		}
		if r.Body != nil {
			op["requestBody"] = map[string]any{"required": true, "content": map[string]any{"application/json": map[string]any{"schema": schemaOf(reflect.TypeOf(r.Body), schemas)}}}
		}
		ok := map[string]any{"description": "OK"}
		if r.Reply != nil {
			ok["content"] = map[string]any{"application/json": map[string]any{"schema": schemaOf(reflect.TypeOf(r.Reply), schemas)}}
		} else {
			ok["content"] = map[string]any{"text/event-stream": map[string]any{"schema": map[string]string{"type": "string"}}}
		}
		responses := map[string]any{"200": ok,
			"default": map[string]any{"description": "an error: bad_request 400, unauthorized 401, forbidden or rejected 403, not_found 404, too_many 429, unavailable 503, internal 500",
				"content": map[string]any{"application/json": map[string]any{"schema": schemaOf(reflect.TypeOf(errorBody{}), schemas)}}}}
		for _, q := range r.Query {
			if q == "async" {
				responses["202"] = map[string]any{"description": "accepted: the operation runs on",
					"content": map[string]any{"application/json": map[string]any{"schema": schemaOf(reflect.TypeOf(api.Operation{}), schemas)}}}
			}
		}
		op["responses"] = responses
		if paths[r.path] == nil {
			paths[r.path] = map[string]any{}
		}
		paths[r.path][strings.ToLower(r.method)] = op
	}
	doc := map[string]any{
		"openapi": "3.1.0",
		"info": map[string]any{"title": "Usher HTTP API", "version": "1",
			"description": "The client link of the Usher controller over HTTPS (docs/http-api.md). Generated from the routes: do not edit."},
		"paths": paths,
		"components": map[string]any{"schemas": schemas, "securitySchemes": map[string]any{
			"basic": map[string]string{"type": "http", "scheme": "basic"},
			"token": map[string]string{"type": "http", "scheme": "bearer", "description": "an API token (ush token create)"}}},
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	return append(b, '\n'), err
}

var timeType = reflect.TypeOf(time.Time{})

// schemaOf is the JSON schema of t; named structs go to schemas and are
// referred to.
func schemaOf(t reflect.Type, schemas map[string]any) map[string]any {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == timeType {
		return map[string]any{"type": "string", "format": "date-time"}
	}
	switch t.Kind() {
	case reflect.String:
		return map[string]any{"type": "string"}
	case reflect.Bool:
		return map[string]any{"type": "boolean"}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64, reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return map[string]any{"type": "integer"}
	case reflect.Float32, reflect.Float64:
		return map[string]any{"type": "number"}
	case reflect.Slice, reflect.Array:
		return map[string]any{"type": "array", "items": schemaOf(t.Elem(), schemas)}
	case reflect.Map:
		return map[string]any{"type": "object", "additionalProperties": schemaOf(t.Elem(), schemas)}
	case reflect.Struct:
		name := t.Name()
		if name == "" {
			return structSchema(t, schemas)
		}
		ref := map[string]any{"$ref": "#/components/schemas/" + name}
		if _, done := schemas[name]; !done {
			schemas[name] = map[string]any{} // a placeholder: recursive types
			schemas[name] = structSchema(t, schemas)
		}
		return ref
	case reflect.Interface:
		return map[string]any{}
	}
	return map[string]any{}
}

func structSchema(t reflect.Type, schemas map[string]any) map[string]any {
	props := map[string]any{}
	var required []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if name == "" {
			name = f.Name
		}
		props[name] = schemaOf(f.Type, schemas)
		if !strings.Contains(opts, "omitempty") && !strings.Contains(opts, "omitzero") {
			required = append(required, name)
		}
	}
	s := map[string]any{"type": "object", "properties": props}
	if len(required) > 0 {
		sort.Strings(required)
		s["required"] = required
	}
	return s
}
