// Command ush is the Usher shell: an interactive and scriptable client of
// the Usher controller. Everything lives in package repl.
package main
