// Package apitest holds test doubles of the contract for tests of the
// mechanism: Node, an in-memory LNM link (api.Node) whose every method can
// be made to fail, refuse or hang. Only tests import it.
package apitest
