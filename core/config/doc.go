// Package config is Usher's configuration system.
//
// # What this room is for
//
// Every component declares the configuration parameters it understands —
// key, type, default and help text — in code, as [Param] values registered
// with a [Set]. Nothing else is a valid parameter: an unknown key in a
// configuration file is an error that names the file and suggests the
// closest known key.
//
// Values are layered, later layers replacing earlier ones:
//
//  1. the defaults declared in code;
//  2. configuration files, read in the order given by [DefaultPaths]:
//     /etc/usher/usher.toml, <os.UserConfigDir>/usher/usher.toml and the
//     file named by $USHER_CONFIG (missing default files are skipped; a
//     missing $USHER_CONFIG file is an error);
//  3. environment variables, if the program calls [Set.LoadEnv];
//  4. command-line flags bound with [Set.BindFlags] and applied with
//     [Set.ApplyFlags].
//
// Layer precedence does not depend on call order: once a value came from a
// flag, a later file load does not replace it (see [Set.Set]).
//
// Files are TOML. Tables map to dotted keys: "[controller] listen = ..." sets
// controller.listen. Parameters of kind [Map] take a free-form table (for
// example per-script policy configuration); later files deep-merge into it.
// Relative paths in String parameters whose last key segment ends in
// "_file", "_dir" or "_path" (or is "file", "dir" or "path") are resolved
// against the directory of the file that set them.
//
// [Set.Source] records where each effective value came from and
// [Set.Show] prints all of them (this backs "usher config show").
// [Set.WriteTOML] writes a file that [Set.LoadFiles] reads back.
//
// # What this room may touch
//
// Package config depends only on the standard library and
// github.com/BurntSushi/toml. It must not import other Usher packages (they
// import it), must not start goroutines, and performs no I/O other than
// reading the configuration files it is asked to read and writing to the
// io.Writer it is handed. Reading environment variables is limited to
// $USHER_CONFIG in [DefaultPaths] and the variables [Set.LoadEnv] is asked
// to look at.
package config
