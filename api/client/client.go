// Package client is the Go client of the cm4bench technician API, used by
// the `cm4bench device`, `backup` and `netboot enable|disable|status`
// commands.
//
//	c, err := client.FromDataDir("/var/lib/cm4bench") // server.json + admin-token
//	devs, err := c.Devices(ctx)
//	a, err := c.SetAction(ctx, "dc:a6:32:01:02:03", contract.ActionDeploy, "")
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cm4bench/cm4bench/api/ledger"
	"github.com/cm4bench/cm4bench/api/recipe"
	"github.com/cm4bench/cm4bench/internal/contract"
)

// Client talks to one server.
type Client struct {
	// BaseURL is the server, e.g. http://127.0.0.1:5000.
	BaseURL string
	// Token is the admin token.
	Token string
	// HTTP is the client to use; nil = http.DefaultClient.
	HTTP *http.Client
	// Source says where BaseURL came from ("--server", "<dir>/server.json"),
	// for error messages.
	Source string
}

// Error is a non-2xx answer from the server.
type Error struct {
	Status  int
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("server answered %d: %s", e.Status, e.Message) }

// FromDataDir builds a client from a server's data dir: the URL from
// server.json and the token from admin-token.
func FromDataDir(dir string) (*Client, error) {
	b, err := os.ReadFile(filepath.Join(dir, contract.FileServerInfo))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("client: no %s in %s: is `cm4bench netboot serve --data %s` running? (or pass --server and --token)", contract.FileServerInfo, dir, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("client: read server info: %w", err)
	}
	var si contract.ServerInfo
	if err := json.Unmarshal(b, &si); err != nil || si.URL == "" {
		return nil, fmt.Errorf("client: %s in %s is not valid server info", contract.FileServerInfo, dir)
	}
	if err := LocalURL(si.URL); err != nil {
		return nil, fmt.Errorf("client: %s names %s: %w; the admin token is not sent there (name a server yourself with --server URL --token T)",
			filepath.Join(dir, contract.FileServerInfo), si.URL, err)
	}
	tok, err := os.ReadFile(filepath.Join(dir, contract.FileAdminToken))
	if err != nil {
		return nil, fmt.Errorf("client: read admin token (are you allowed to read %s?): %w", filepath.Join(dir, contract.FileAdminToken), err)
	}
	return &Client{BaseURL: si.URL, Token: strings.TrimSpace(string(tok)), Source: filepath.Join(dir, contract.FileServerInfo)}, nil
}

// ErrNotLocal marks a server URL that is neither loopback nor an address
// of this machine.
var ErrNotLocal = errors.New("not a loopback address or an address of this machine")

// LocalURL checks a server URL read from a file before any request (with
// the admin token) goes there: http or https, and a host that is loopback
// ("localhost" included) or an address configured on one of this
// machine's interfaces (the bench address of a server running here).
func LocalURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("not an http(s) URL")
	}
	host := u.Hostname()
	if strings.EqualFold(host, "localhost") {
		return nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return fmt.Errorf("host %q is a name, not an address: %w", host, ErrNotLocal)
	}
	ip = ip.Unmap()
	if ip.IsLoopback() {
		return nil
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return fmt.Errorf("list this machine's addresses: %w", err)
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Unmap() == ip {
			return nil
		}
	}
	return fmt.Errorf("%s: %w", ip, ErrNotLocal)
}

// RotateToken asks the server for a new admin token (every dashboard
// session ends) and returns it; c uses it from then on.
func (c *Client) RotateToken(ctx context.Context) (string, error) {
	var out struct {
		Token string `json:"token"`
	}
	if err := c.do(ctx, http.MethodPost, contract.PathRotate, nil, &out); err != nil {
		return "", err
	}
	if len(out.Token) < 16 {
		return "", errors.New("client: the server answered no new token")
	}
	c.Token = out.Token
	return out.Token, nil
}

func (c *Client) http() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return http.DefaultClient
}

// do sends a request; in (if not nil) is sent as JSON and out (if not nil)
// decoded from the JSON answer.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	resp, err := c.send(ctx, method, path, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("client: decode answer of %s %s: %w", method, path, err)
	}
	return nil
}

func (c *Client) send(ctx context.Context, method, path string, in any) (*http.Response, error) {
	var body io.Reader
	ctype := "application/json"
	if r, ok := in.(Raw); ok {
		body, ctype = bytes.NewReader(r.Data), r.ContentType
	} else if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, fmt.Errorf("client: encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.BaseURL, "/")+path, body)
	if err != nil {
		return nil, fmt.Errorf("client: %s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", ctype)
	}
	req.Header.Set(contract.HeaderToken, "Bearer "+c.Token)
	resp, err := c.http().Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("client: %s %s: %w", method, path, ctx.Err())
		}
		from := ""
		if c.Source != "" {
			from = " (from " + c.Source + ")"
		}
		var op *net.OpError
		if errors.As(err, &op) {
			err = op.Err
		}
		return nil, fmt.Errorf("client: cannot reach the cm4bench server at %s%s: %w; is `cm4bench netboot serve` running?", c.BaseURL, from, err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		var ae contract.APIError
		msg := strings.TrimSpace(string(b))
		if json.Unmarshal(b, &ae) == nil && ae.Error != "" {
			msg = ae.Error
		}
		return nil, &Error{Status: resp.StatusCode, Message: msg}
	}
	return resp, nil
}

func esc(s string) string { return url.PathEscape(s) }

// Raw is a request body sent as it is (a YAML file), not as JSON.
type Raw struct {
	Data        []byte
	ContentType string
}

// getRaw returns the body of a GET (a YAML export).
func (c *Client) getRaw(ctx context.Context, path string) ([]byte, error) {
	resp, err := c.send(ctx, "GET", path, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("client: GET %s: %w", path, err)
	}
	return b, nil
}

// ApplyRecipes sends a YAML file of recipes (pools already resolved).
func (c *Client) ApplyRecipes(ctx context.Context, yaml []byte) ([]contract.RecipeApplied, error) {
	var out []contract.RecipeApplied
	return out, c.do(ctx, "PUT", "/api/v1/recipes", Raw{Data: yaml, ContentType: "application/yaml"}, &out)
}

// Recipes lists the latest version of every recipe with its pools.
func (c *Client) Recipes(ctx context.Context) ([]recipe.Info, error) {
	var out []recipe.Info
	return out, c.do(ctx, "GET", "/api/v1/recipes", nil, &out)
}

// Recipe returns one recipe version (0 = the latest).
func (c *Client) Recipe(ctx context.Context, name string, version int) (recipe.Info, error) {
	var out recipe.Info
	return out, c.do(ctx, "GET", "/api/v1/recipes/"+esc(name)+versionQuery(version, "?"), nil, &out)
}

// RecipesYAML exports recipes as YAML: one (name, version; 0 = latest) or,
// with name "", the latest of all.
func (c *Client) RecipesYAML(ctx context.Context, name string, version int) ([]byte, error) {
	if name == "" {
		return c.getRaw(ctx, "/api/v1/recipes?format=yaml")
	}
	return c.getRaw(ctx, "/api/v1/recipes/"+esc(name)+"?format=yaml"+versionQuery(version, "&"))
}

func versionQuery(v int, sep string) string {
	if v <= 0 {
		return ""
	}
	return sep + "version=" + strconv.Itoa(v)
}

// RecipeValues lists who got which value of a recipe's pools.
func (c *Client) RecipeValues(ctx context.Context, name string) ([]contract.PoolRecord, error) {
	var out []contract.PoolRecord
	return out, c.do(ctx, "GET", "/api/v1/recipes/"+esc(name)+"/values", nil, &out)
}

// Rules returns the rule list.
func (c *Client) Rules(ctx context.Context) (recipe.RuleSet, error) {
	var out recipe.RuleSet
	return out, c.do(ctx, "GET", "/api/v1/rules", nil, &out)
}

// RulesYAML exports the rule list as YAML.
func (c *Client) RulesYAML(ctx context.Context) ([]byte, error) {
	return c.getRaw(ctx, "/api/v1/rules?format=yaml")
}

// ApplyRules replaces the rule list from YAML.
func (c *Client) ApplyRules(ctx context.Context, yaml []byte) (recipe.RuleSet, error) {
	var out recipe.RuleSet
	return out, c.do(ctx, "PUT", "/api/v1/rules", Raw{Data: yaml, ContentType: "application/yaml"}, &out)
}

// Armed reports the bench's armed switch.
func (c *Client) Armed(ctx context.Context) (bool, error) {
	var a contract.Armed
	err := c.do(ctx, "GET", "/api/v1/armed", nil, &a)
	return a.Armed, err
}

// SetArmed arms or disarms the bench.
func (c *Client) SetArmed(ctx context.Context, on bool) error {
	return c.do(ctx, "PUT", "/api/v1/armed", contract.Armed{Armed: on}, nil)
}

// DeployRecipe starts a deploy of a recipe's latest version on a board.
func (c *Client) DeployRecipe(ctx context.Context, mac, name string) (contract.Action, error) {
	var a contract.Action
	return a, c.do(ctx, "POST", "/api/v1/devices/"+esc(mac)+"/action", contract.SetActionRequest{Action: contract.ActionDeploy, Recipe: name}, &a)
}

// Status returns the server status.
func (c *Client) Status(ctx context.Context) (contract.Status, error) {
	var s contract.Status
	return s, c.do(ctx, "GET", "/api/v1/status", nil, &s)
}

// Devices lists every device.
func (c *Client) Devices(ctx context.Context) ([]contract.Device, error) {
	var d []contract.Device
	return d, c.do(ctx, "GET", "/api/v1/devices", nil, &d)
}

// Device returns one device with its recent actions.
func (c *Client) Device(ctx context.Context, mac string) (contract.Device, error) {
	var d contract.Device
	return d, c.do(ctx, "GET", "/api/v1/devices/"+esc(mac), nil, &d)
}

// SetAction sets a device's action: deploy (image "" = assigned or
// default), backup, or none (cancel).
func (c *Client) SetAction(ctx context.Context, mac, action, image string) (contract.Action, error) {
	var a contract.Action
	return a, c.do(ctx, "POST", "/api/v1/devices/"+esc(mac)+"/action", contract.SetActionRequest{Action: action, Image: image}, &a)
}

// SetActions sets one action for several devices.
func (c *Client) SetActions(ctx context.Context, macs []string, action, image string) ([]contract.Action, error) {
	var a []contract.Action
	return a, c.do(ctx, "POST", "/api/v1/actions", contract.BulkActionRequest{MACs: macs, Action: action, Image: image}, &a)
}

// PowerCycle cuts and restores a board's power (the server needs
// --power-command).
func (c *Client) PowerCycle(ctx context.Context, mac string) (contract.PowerCycled, error) {
	var r contract.PowerCycled
	return r, c.do(ctx, "POST", "/api/v1/devices/"+esc(mac)+"/power-cycle", nil, &r)
}

// SetDeviceImage assigns an image to a device ("" = default).
func (c *Client) SetDeviceImage(ctx context.Context, mac, image string) (contract.Device, error) {
	var d contract.Device
	return d, c.do(ctx, "PUT", "/api/v1/devices/"+esc(mac)+"/image", contract.SetImageRequest{Image: image}, &d)
}

// Netboot returns the global switch.
func (c *Client) Netboot(ctx context.Context) (bool, error) {
	var n contract.NetbootSwitch
	err := c.do(ctx, "GET", "/api/v1/netboot", nil, &n)
	return n.Enabled, err
}

// SetNetboot sets the global switch.
func (c *Client) SetNetboot(ctx context.Context, on bool) error {
	return c.do(ctx, "PUT", "/api/v1/netboot", contract.NetbootSwitch{Enabled: on}, nil)
}

// DeviceNetboot returns one MAC's switch.
func (c *Client) DeviceNetboot(ctx context.Context, mac string) (contract.NetbootSwitch, error) {
	var n contract.NetbootSwitch
	return n, c.do(ctx, "GET", "/api/v1/devices/"+esc(mac)+"/netboot", nil, &n)
}

// SetDeviceNetboot sets one MAC's switch (the MAC need not be known yet).
func (c *Client) SetDeviceNetboot(ctx context.Context, mac string, on bool) (contract.NetbootSwitch, error) {
	var n contract.NetbootSwitch
	return n, c.do(ctx, "PUT", "/api/v1/devices/"+esc(mac)+"/netboot", contract.NetbootSwitch{Enabled: on}, &n)
}

// Images lists the images.
func (c *Client) Images(ctx context.Context) ([]contract.Image, error) {
	var im []contract.Image
	return im, c.do(ctx, "GET", "/api/v1/images", nil, &im)
}

// SetDefaultImage chooses the bench default image ("" = the server's
// --image) and returns the default now in force.
func (c *Client) SetDefaultImage(ctx context.Context, name string) (string, error) {
	var r contract.DefaultImageRequest
	err := c.do(ctx, "PUT", "/api/v1/images/default", contract.DefaultImageRequest{Image: name}, &r)
	return r.Image, err
}

// Backups lists stored backups, newest first.
func (c *Client) Backups(ctx context.Context) ([]contract.Backup, error) {
	var b []contract.Backup
	return b, c.do(ctx, "GET", "/api/v1/backups", nil, &b)
}

// DownloadBackup streams a backup, as stored (.img or .img.zst), into w
// and returns the byte count; a short stream is an error.
func (c *Client) DownloadBackup(ctx context.Context, id string, w io.Writer) (n int64, err error) {
	resp, err := c.send(ctx, "GET", "/api/v1/backups/"+esc(id)+"/download", nil)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err = io.Copy(w, resp.Body)
	if err != nil {
		return n, fmt.Errorf("client: download backup %s: %w", id, err)
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return n, fmt.Errorf("client: download backup %s: got %d of %d bytes", id, n, resp.ContentLength)
	}
	return n, nil
}

// DeleteBackup deletes a backup.
func (c *Client) DeleteBackup(ctx context.Context, id string) error {
	return c.do(ctx, "DELETE", "/api/v1/backups/"+esc(id), nil, nil)
}

// Actions lists the action history (mac "" = all), newest first.
func (c *Client) Actions(ctx context.Context, mac string, limit int) ([]contract.Action, error) {
	q := url.Values{}
	if mac != "" {
		q.Set("mac", mac)
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var a []contract.Action
	return a, c.do(ctx, "GET", "/api/v1/actions?"+q.Encode(), nil, &a)
}

// Events lists logged events after since (-1 = the newest limit).
func (c *Client) Events(ctx context.Context, since int64, limit int) ([]contract.Event, error) {
	var e []contract.Event
	return e, c.do(ctx, "GET", fmt.Sprintf("/api/v1/events?since=%d&limit=%d", since, limit), nil, &e)
}

// LedgerQuery filters the ledger (see GET /api/v1/ledger).
type LedgerQuery struct {
	Since, Until, Recipe, Result, Serial string
	Limit                                int
}

func (q LedgerQuery) values(format string) string {
	v := url.Values{}
	for k, s := range map[string]string{"since": q.Since, "until": q.Until, "recipe": q.Recipe, "result": q.Result, "serial": q.Serial, "format": format} {
		if s != "" {
			v.Set(k, s)
		}
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	return v.Encode()
}

// Ledger returns a page of ledger rows (at most 10000; exports stream all).
func (c *Client) Ledger(ctx context.Context, q LedgerQuery) ([]contract.LedgerRow, error) {
	var out []contract.LedgerRow
	return out, c.do(ctx, "GET", "/api/v1/ledger?"+q.values("json"), nil, &out)
}

// LedgerRow returns one ledger row.
func (c *Client) LedgerRow(ctx context.Context, id string) (contract.LedgerRow, error) {
	var out contract.LedgerRow
	return out, c.do(ctx, "GET", "/api/v1/ledger/"+esc(id), nil, &out)
}

// ExportLedger streams the ledger as csv or jsonl into w and returns the
// bytes copied.
func (c *Client) ExportLedger(ctx context.Context, q LedgerQuery, format string, w io.Writer) (int64, error) {
	resp, err := c.send(ctx, "GET", "/api/v1/ledger?"+q.values(format), nil)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		return n, fmt.Errorf("client: ledger export: %w", err)
	}
	return n, nil
}

// Figures returns the line figures (the dashboard's and /metrics').
func (c *Client) Figures(ctx context.Context) (LineFigures, error) {
	var f LineFigures
	return f, c.do(ctx, "GET", "/api/v1/figures", nil, &f)
}

// LineFigures mirrors api.LineFigures (the client does not import the
// server).
type LineFigures struct {
	Hour  []ledger.Figures `json:"hour"`
	Shift []ledger.Figures `json:"shift"`
}

// Webhooks lists the endpoints.
func (c *Client) Webhooks(ctx context.Context) ([]contract.Webhook, error) {
	var out []contract.Webhook
	return out, c.do(ctx, "GET", "/api/v1/webhooks", nil, &out)
}

// AddWebhook adds an endpoint; the answer carries its secret, once.
func (c *Client) AddWebhook(ctx context.Context, req contract.WebhookRequest) (contract.Webhook, error) {
	var out contract.Webhook
	return out, c.do(ctx, "POST", "/api/v1/webhooks", req, &out)
}

// DeleteWebhook removes an endpoint.
func (c *Client) DeleteWebhook(ctx context.Context, id string) error {
	return c.do(ctx, "DELETE", "/api/v1/webhooks/"+esc(id), nil, nil)
}

// Deliveries lists the newest webhook deliveries.
func (c *Client) Deliveries(ctx context.Context, limit int) ([]contract.Delivery, error) {
	var out []contract.Delivery
	return out, c.do(ctx, "GET", "/api/v1/webhooks/deliveries?limit="+strconv.Itoa(limit), nil, &out)
}
