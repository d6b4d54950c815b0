package api

import (
	"regexp"
	"strings"
)

// RoutesForTest lists every route the server serves as "METHOD /path" with
// OpenAPI-style {params}.
func RoutesForTest(s *Server) []string {
	s.Handler()
	param := regexp.MustCompile(`[:*]([a-z]+)`)
	var out []string
	for _, r := range s.engine.Routes() {
		out = append(out, r.Method+" "+param.ReplaceAllString(r.Path, "{$1}"))
	}
	for _, r := range []string{routeImageGet, routeImageHead, routeBackupPut, routeBackupPost} {
		out = append(out, strings.TrimSpace(r))
	}
	return out
}
