package api

import (
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/cm4bench/cm4bench/api/recipe"
	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/gin-gonic/gin"
)

// op documents one route. The OpenAPI document is built from this table
// and from the wire types by reflection, so it cannot drift from the code;
// a test checks that every registered route is in it.
type op struct {
	method, path, summary, tag string
	admin                      bool
	params                     []param
	body                       any    // request body example type; nil = none
	bodyType                   string // content type when not JSON
	resp                       any    // response type (a slice value for arrays); nil = see respType
	respType                   string // non-JSON response content type
	status                     int    // success status; 0 = 200
}

type param struct{ name, in, desc string }

func apiOps() []op {
	macP := param{"mac", "path", "device MAC, e.g. dc:a6:32:01:02:03"}
	return []op{
		{method: "POST", path: contract.PathRegister, tag: "device", summary: "Register a netbooted device (JSON or form fields mac, ip; the agent adds facts)", body: contract.RegisterRequest{}, resp: contract.RegisterResponse{}},
		{method: "GET", path: contract.PathPoll, tag: "device", summary: "Poll for the device's action: none, deploy (url) or backup (upload_url)", params: []param{{"mac", "query", "device MAC"}}, resp: contract.PollResponse{}},
		{method: "POST", path: contract.PathActionDone, tag: "device", summary: "Finish the open action (JSON or form). A missing status means success; a backup counts only if its upload completed. Success switches netboot off for the MAC.", body: contract.ActionDone{}, resp: contract.Action{}},
		{method: "POST", path: contract.PathProgress, tag: "device", summary: "Agent progress report (about once a second)", body: contract.Progress{}, resp: map[string]string{}},
		{method: "POST", path: contract.PathLog, tag: "device", summary: "Agent log tail", body: contract.LogLines{}, resp: map[string]string{}},
		{method: "GET", path: contract.PathImage + "/{id}", tag: "device", summary: "Stream the image of deploy action id: raw (Range, ETag), zstd with Accept-Encoding: zstd, or the sparse stream of a raw image (data extents only, Range, ETag) with Accept-Encoding: x-cm4bench-sparse. Only for the device that polled the action, while it is open.", params: []param{{"id", "path", "action id"}, {"token", "query", "per-action token from the poll"}}, respType: "application/octet-stream"},
		{method: "HEAD", path: contract.PathImage + "/{id}", tag: "device", summary: "Headers of the image stream (size, sha256, format)", params: []param{{"id", "path", "action id"}, {"token", "query", "per-action token"}}, respType: "application/octet-stream"},
		{method: "PUT", path: contract.PathBackup + "/{id}", tag: "device", summary: "Upload the backup of action id (raw, or zstd with Content-Encoding: zstd; chunked or with a length)", params: []param{{"id", "path", "action id"}, {"token", "query", "per-action token"}}, bodyType: "application/octet-stream", resp: contract.Backup{}, status: 201},
		{method: "POST", path: contract.PathBackup + "/{id}", tag: "device", summary: "Same as PUT (curl --data-binary @-)", params: []param{{"id", "path", "action id"}, {"token", "query", "per-action token"}}, bodyType: "application/octet-stream", resp: contract.Backup{}, status: 201},
		{method: "GET", path: contract.PathOpenAPI, tag: "meta", summary: "This document", respType: "application/json"},
		{method: "GET", path: contract.PathMetrics, tag: "meta", summary: "Prometheus metrics", respType: "text/plain"},
		{method: "GET", path: "/", tag: "meta", summary: "The dashboard", respType: "text/html"},
		{method: "GET", path: "/ui/{path}", tag: "meta", summary: "Dashboard assets", params: []param{{"path", "path", "asset path"}}, respType: "application/octet-stream"},
		{method: "POST", path: contract.PathLogin, tag: "auth", summary: "Log in with the admin token; sets the HttpOnly cookie " + contract.CookieSession, body: contract.LoginRequest{}, resp: map[string]string{}},
		{method: "POST", path: contract.PathLogout, tag: "auth", summary: "End the session and clear its cookie", resp: map[string]string{}},
		{method: "POST", path: contract.PathRotate, tag: "auth", summary: "Make a new admin token (written to <data>/admin-token) and end every session", resp: map[string]string{}},
		{method: "GET", path: contract.PathEvents, tag: "technician", admin: true, summary: "Live events (SSE: event: <kind>, data: contract.Event JSON, id: event id; Last-Event-ID or ?since= replays)", params: []param{{"since", "query", "replay events after this id"}}, respType: "text/event-stream"},
		{method: "GET", path: "/api/v1/status", tag: "technician", admin: true, summary: "Server status", resp: contract.Status{}},
		{method: "GET", path: "/api/v1/devices", tag: "technician", admin: true, summary: "All devices", resp: []contract.Device{}},
		{method: "GET", path: "/api/v1/devices/{mac}", tag: "technician", admin: true, summary: "One device with its recent actions", params: []param{macP}, resp: contract.Device{}},
		{method: "POST", path: "/api/v1/devices/{mac}/action", tag: "technician", admin: true, summary: "Set the device's action: deploy, backup, or none (cancel)", params: []param{macP}, body: contract.SetActionRequest{}, resp: contract.Action{}},
		{method: "PUT", path: "/api/v1/devices/{mac}/image", tag: "technician", admin: true, summary: "Assign an image to the device (empty = default)", params: []param{macP}, body: contract.SetImageRequest{}, resp: contract.Device{}},
		{method: "GET", path: "/api/v1/devices/{mac}/netboot", tag: "technician", admin: true, summary: "The device's netboot switch", params: []param{macP}, resp: contract.NetbootSwitch{}},
		{method: "PUT", path: "/api/v1/devices/{mac}/netboot", tag: "technician", admin: true, summary: "Switch netboot on or off for one MAC (known or not yet seen)", params: []param{macP}, body: contract.NetbootSwitch{}, resp: contract.NetbootSwitch{}},
		{method: "POST", path: "/api/v1/actions", tag: "technician", admin: true, summary: "Set one action for several devices", body: contract.BulkActionRequest{}, resp: []contract.Action{}},
		{method: "GET", path: "/api/v1/actions", tag: "technician", admin: true, summary: "Action history, newest first", params: []param{{"mac", "query", "only this device"}, {"limit", "query", "at most this many (default 100)"}}, resp: []contract.Action{}},
		{method: "GET", path: "/api/v1/netboot", tag: "technician", admin: true, summary: "The global netboot switch", resp: contract.NetbootSwitch{}},
		{method: "PUT", path: "/api/v1/netboot", tag: "technician", admin: true, summary: "Set the global netboot switch", body: contract.NetbootSwitch{}, resp: contract.NetbootSwitch{}},
		{method: "GET", path: "/api/v1/images", tag: "technician", admin: true, summary: "Images (default first); sha256 is empty while hashing", resp: []contract.Image{}},
		{method: "POST", path: "/api/v1/images", tag: "technician", admin: true, summary: "Upload an image (raw body; ?name=X.img[.gz|.xz|.zst])", params: []param{{"name", "query", "file name with its format extension"}}, bodyType: "application/octet-stream", resp: contract.Image{}, status: 201},
		{method: "DELETE", path: "/api/v1/images/{name}", tag: "technician", admin: true, summary: "Delete a library image (not the --image file, not the bench default)", params: []param{{"name", "path", "image name"}}, resp: map[string]string{}},
		{method: "POST", path: "/api/v1/devices/{mac}/power-cycle", tag: "technician", admin: true, summary: "Cut and restore the board's power through serve --power-command (501 without one, 502 if the switch failed)", params: []param{{"mac", "path", "MAC or serial"}}, resp: contract.PowerCycled{}},
		{method: "GET", path: "/api/v1/recipes", tag: "line", admin: true, summary: "Recipes (latest versions) with the state of their pools; ?format=yaml exports them as cm4bench recipe apply reads them", resp: []recipe.Info{}},
		{method: "PUT", path: "/api/v1/recipes", tag: "line", admin: true, summary: "Apply a YAML file of recipes (unknown keys refused; all checked before any is stored; an edit of a used version makes a new version)", bodyType: "application/yaml", resp: []contract.RecipeApplied{}},
		{method: "GET", path: "/api/v1/recipes/{name}", tag: "line", admin: true, summary: "One recipe (?version=N, default the latest; ?format=yaml)", params: []param{{"name", "path", "recipe name"}}, resp: recipe.Info{}},
		{method: "GET", path: "/api/v1/recipes/{name}/values", tag: "line", admin: true, summary: "Which board got which pool value, and its state", params: []param{{"name", "path", "recipe name"}}, resp: []contract.PoolRecord{}},
		{method: "GET", path: "/api/v1/rules", tag: "line", admin: true, summary: "The ordered rule list (?format=yaml)", resp: recipe.RuleSet{}},
		{method: "PUT", path: "/api/v1/rules", tag: "line", admin: true, summary: "Replace the rule list from YAML (every rule's recipe must exist)", bodyType: "application/yaml", resp: recipe.RuleSet{}},
		{method: "GET", path: "/api/v1/webhooks", tag: "records", admin: true, summary: "Webhook endpoints (secrets are shown only at creation)", resp: []contract.Webhook{}},
		{method: "POST", path: "/api/v1/webhooks", tag: "records", admin: true, summary: "Add an endpoint for board.registered, action.done, action.failed, ledger.row; deliveries are signed X-Cm4bench-Signature: sha256=HMAC(secret, body)", body: contract.WebhookRequest{}, resp: contract.Webhook{}, status: 201},
		{method: "DELETE", path: "/api/v1/webhooks/{id}", tag: "records", admin: true, summary: "Remove an endpoint and its undelivered deliveries", params: []param{{"id", "path", "webhook id"}}, resp: map[string]string{}},
		{method: "GET", path: "/api/v1/webhooks/deliveries", tag: "records", admin: true, summary: "The delivery log, newest first: pending (with the next try), delivered, failed (given up)", params: []param{{"limit", "query", "at most this many (50)"}}, resp: []contract.Delivery{}},
		{method: "GET", path: "/api/v1/figures", tag: "records", admin: true, summary: "Line figures from the ledger over the last hour and the shift: boards per hour, first-pass yield, median and p95 seconds per phase, for the bench and per recipe", resp: LineFigures{}},
		{method: "GET", path: "/api/v1/actions/{id}/{format}", tag: "records", admin: true, summary: "A finished recipe deploy's label: label.pdf (as printed) or label.png (preview)", params: []param{{"id", "path", "action id"}, {"format", "path", "label.pdf or label.png"}}, bodyType: "application/pdf", resp: map[string]string{}},
		{method: "POST", path: "/api/v1/actions/{id}/label/print", tag: "records", admin: true, summary: "Print a finished recipe deploy's label on its recipe's printer (502 names the printer's problem; the board stays provisioned)", params: []param{{"id", "path", "action id"}}, resp: map[string]string{}},
		{method: "GET", path: "/api/v1/ledger", tag: "records", admin: true, summary: "Ledger rows, oldest first; ?format=csv (RFC 4180) or jsonl streams every row; filters since, until (RFC 3339 or a duration like 8h), recipe, result, serial, limit", params: []param{{"format", "query", "json (a page of 10000), csv or jsonl"}, {"since", "query", "time or duration"}, {"until", "query", "time or duration"}, {"recipe", "query", "recipe name"}, {"result", "query", "done, failed or cancelled"}, {"serial", "query", "board serial"}}, resp: []contract.LedgerRow{}},
		{method: "GET", path: "/api/v1/ledger/{id}", tag: "records", admin: true, summary: "One ledger row", params: []param{{"id", "path", "row id"}}, resp: contract.LedgerRow{}},
		{method: "GET", path: "/api/v1/armed", tag: "line", admin: true, summary: "Whether auto rules start deploys on their own", resp: contract.Armed{}},
		{method: "PUT", path: "/api/v1/armed", tag: "line", admin: true, summary: "Arm or disarm the bench (arming starts the waiting boards an auto rule matches)", body: contract.Armed{}, resp: contract.Armed{}},
		{method: "PUT", path: "/api/v1/images/default", tag: "technician", admin: true, summary: "Choose the image Deploy writes to a board with none of its own (\"\" = the server's --image)", body: contract.DefaultImageRequest{}, resp: contract.DefaultImageRequest{}},
		{method: "GET", path: "/api/v1/backups", tag: "technician", admin: true, summary: "Stored backups, newest first", resp: []contract.Backup{}},
		{method: "GET", path: "/api/v1/backups/{id}/download", tag: "technician", admin: true, summary: "Download a backup as stored (.img or .img.zst)", params: []param{{"id", "path", "backup id"}}, respType: "application/octet-stream"},
		{method: "DELETE", path: "/api/v1/backups/{id}", tag: "technician", admin: true, summary: "Delete a backup", params: []param{{"id", "path", "backup id"}}, resp: map[string]string{}},
		{method: "GET", path: "/api/v1/events", tag: "technician", admin: true, summary: "Event history, oldest first", params: []param{{"since", "query", "events after this id (default: the newest)"}, {"limit", "query", "at most this many (default 500, at most 10000)"}}, resp: []contract.Event{}},
	}
}

func (s *Server) handleOpenAPI(c *gin.Context) {
	writeJSON(c.Writer, http.StatusOK, openAPIDoc(s.Version))
}

// openAPIDoc builds the OpenAPI 3.0 document.
func openAPIDoc(version string) map[string]any {
	schemas := map[string]any{}
	paths := map[string]any{}
	for _, o := range apiOps() {
		item, _ := paths[o.path].(map[string]any)
		if item == nil {
			item = map[string]any{}
			paths[o.path] = item
		}
		opj := map[string]any{"summary": o.summary, "tags": []string{o.tag},
			"operationId": strings.ToLower(o.method) + strings.NewReplacer("/", "_", "{", "", "}", "", "-", "_").Replace(o.path)}
		var ps []any
		for _, p := range o.params {
			ps = append(ps, map[string]any{"name": p.name, "in": p.in, "required": p.in == "path", "description": p.desc, "schema": map[string]any{"type": "string"}})
		}
		if ps != nil {
			opj["parameters"] = ps
		}
		if o.body != nil {
			content := map[string]any{"application/json": map[string]any{"schema": schemaOf(reflect.TypeOf(o.body), schemas)}}
			if o.path == contract.PathRegister || o.path == contract.PathActionDone {
				content["application/x-www-form-urlencoded"] = map[string]any{"schema": schemaOf(reflect.TypeOf(o.body), schemas)}
			}
			opj["requestBody"] = map[string]any{"required": true, "content": content}
		} else if o.bodyType != "" {
			opj["requestBody"] = map[string]any{"required": true, "content": map[string]any{o.bodyType: map[string]any{"schema": map[string]any{"type": "string", "format": "binary"}}}}
		}
		code := o.status
		if code == 0 {
			code = 200
		}
		ok := map[string]any{"description": http.StatusText(code)}
		switch {
		case o.resp != nil:
			ok["content"] = map[string]any{"application/json": map[string]any{"schema": schemaOf(reflect.TypeOf(o.resp), schemas)}}
		case o.respType != "":
			ok["content"] = map[string]any{o.respType: map[string]any{"schema": map[string]any{"type": "string"}}}
		}
		errResp := map[string]any{"description": "error", "content": map[string]any{"application/json": map[string]any{"schema": schemaOf(reflect.TypeOf(contract.APIError{}), schemas)}}}
		resps := map[string]any{strconv.Itoa(code): ok, "default": errResp}
		if o.admin {
			opj["security"] = []any{map[string]any{"bearer": []string{}}, map[string]any{"cookie": []string{}}}
			resps["401"] = errResp
		} else {
			opj["security"] = []any{}
		}
		opj["responses"] = resps
		item[strings.ToLower(o.method)] = opj
	}
	return map[string]any{
		"openapi": "3.0.3",
		"info": map[string]any{"title": "cm4bench", "version": version,
			"description": "Device API (shell-client compatible, plus cm4agent extensions) and technician API of cm4bench netboot serve."},
		"paths": paths,
		"components": map[string]any{
			"schemas": schemas,
			"securitySchemes": map[string]any{
				"bearer": map[string]any{"type": "http", "scheme": "bearer", "description": "the admin token from <data>/admin-token"},
				"cookie": map[string]any{"type": "apiKey", "in": "cookie", "name": contract.CookieSession},
			},
		},
	}
}

// schemaOf returns the JSON schema of t, adding named wire structs to
// schemas and referring to them.
func schemaOf(t reflect.Type, schemas map[string]any) map[string]any {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == reflect.TypeFor[time.Time]() {
		return map[string]any{"type": "string", "format": "date-time"}
	}
	switch t.Kind() {
	case reflect.String:
		return map[string]any{"type": "string"}
	case reflect.Bool:
		return map[string]any{"type": "boolean"}
	case reflect.Int, reflect.Int64, reflect.Int32, reflect.Uint, reflect.Uint64, reflect.Uint32:
		return map[string]any{"type": "integer", "format": "int64"}
	case reflect.Float64, reflect.Float32:
		return map[string]any{"type": "number"}
	case reflect.Slice, reflect.Array:
		return map[string]any{"type": "array", "items": schemaOf(t.Elem(), schemas)}
	case reflect.Map:
		return map[string]any{"type": "object", "additionalProperties": schemaOf(t.Elem(), schemas)}
	case reflect.Interface:
		return map[string]any{}
	case reflect.Struct:
		name := t.Name()
		if name != "" {
			if _, ok := schemas[name]; ok {
				return map[string]any{"$ref": "#/components/schemas/" + name}
			}
			schemas[name] = map[string]any{} // break cycles
		}
		props := map[string]any{}
		var req []string
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			tag := f.Tag.Get("json")
			if tag == "-" || !f.IsExported() {
				continue
			}
			n, opts, _ := strings.Cut(tag, ",")
			if n == "" {
				n = f.Name
			}
			props[n] = schemaOf(f.Type, schemas)
			if !strings.Contains(opts, "omitempty") && f.Type.Kind() != reflect.Pointer {
				req = append(req, n)
			}
		}
		sc := map[string]any{"type": "object", "properties": props}
		if req != nil {
			sc["required"] = req
		}
		if name == "" {
			return sc
		}
		schemas[name] = sc
		return map[string]any{"$ref": "#/components/schemas/" + name}
	}
	return map[string]any{}
}
