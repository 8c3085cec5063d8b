// Package webui is the web console: static files (HTML, CSS, plain
// JavaScript, no build step) embedded in the controller and served at
// /ui/ on the HTTP API's listener. The page talks to the HTTP API only
// (docs/http-api.md): it logs in with HTTP Basic (the credentials stay
// in the page's memory), follows the event stream with fetch (so it can
// send them) and resumes it with Last-Event-ID. What it may touch: only
// its embedded files.
package webui

import (
	"embed"
	"io/fs"
)

//go:embed static
var files embed.FS

// FS is the console's files, rooted at its index.html.
func FS() fs.FS {
	sub, err := fs.Sub(files, "static")
	if err != nil {
		panic(err) // the embedded tree always has static/
	}
	return sub
}
