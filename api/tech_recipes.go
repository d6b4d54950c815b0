package api

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"

	"github.com/gin-gonic/gin"

	"github.com/cm4bench/cm4bench/api/images"
	"github.com/cm4bench/cm4bench/api/recipe"
	"github.com/cm4bench/cm4bench/api/store"
	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/netboot/bootfs"
)

// maxRecipeBody bounds a recipe or rules file (a files pool carries
// certificates).
const maxRecipeBody = 8 << 20

func (s *Server) readBody(c *gin.Context) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(c.Request.Body, maxRecipeBody+1))
	if err != nil {
		return nil, httpErr(http.StatusBadRequest, "read the body: %v", err)
	}
	if len(b) > maxRecipeBody {
		return nil, httpErr(http.StatusRequestEntityTooLarge, "the file is larger than %d bytes", maxRecipeBody)
	}
	return b, nil
}

// pinnedImage is the recipe's image, if it is still the one the recipe
// pinned by sha256 (hashes are cached by the library).
func (s *Server) pinnedImage(ctx context.Context, r recipe.Recipe) (images.Entry, error) {
	e, err := s.Images.Info(ctx, r.Image)
	if err != nil {
		return e, httpErr(http.StatusUnprocessableEntity, "recipe %s: image %s: %v", r.Name, r.Image, err)
	}
	if e.SHA256 != r.SHA256 {
		return e, httpErr(http.StatusUnprocessableEntity, "recipe %s pins sha256 %s but image %s is %s: put the image's sha256 in the recipe (cm4bench image list)", r.Name, r.SHA256, r.Image, e.SHA256)
	}
	return e, nil
}

// checkRecipeImage checks, when a recipe is applied, what the server alone
// can: the image is the one pinned, and has a FAT boot partition to
// customise. A deploy then needs only the pin (pinnedImage): the same
// bytes have the same partitions.
func (s *Server) checkRecipeImage(ctx context.Context, r recipe.Recipe) (images.Entry, error) {
	e, err := s.pinnedImage(ctx, r)
	if err != nil {
		return e, err
	}
	if len(r.Files) > 0 {
		if err := s.findBootFS(e); err != nil {
			return e, httpErr(http.StatusUnprocessableEntity, "recipe %s writes per-device files, but image %s cannot take them: %v", r.Name, r.Image, err)
		}
	}
	return e, nil
}

// findBootFS reads the start of the (decompressed) image, enough for the
// partition table and each partition's boot sector.
func (s *Server) findBootFS(e images.Entry) error {
	f, err := os.Open(e.Path)
	if err != nil {
		return err
	}
	defer f.Close()
	rc, err := images.Decompress(f, e.Format)
	if err != nil {
		return err
	}
	defer rc.Close()
	_, err = bootfs.Find(&prefixReader{r: rc, max: 256 << 20}, e.Size)
	return err
}

// prefixReader serves ReadAt from the first max bytes of a stream, reading
// forward only as far as asked.
type prefixReader struct {
	r   io.Reader
	buf []byte
	max int
	err error
}

func (p *prefixReader) ReadAt(b []byte, off int64) (int, error) {
	end := off + int64(len(b))
	if end > int64(p.max) {
		return 0, fmt.Errorf("the boot partition starts beyond the first %d MiB", p.max>>20)
	}
	for int64(len(p.buf)) < end && p.err == nil {
		chunk := make([]byte, min(1<<20, int(end)-len(p.buf)+(1<<16)))
		n, err := io.ReadFull(p.r, chunk)
		p.buf = append(p.buf, chunk[:n]...)
		if err != nil {
			p.err = err
		}
	}
	if off >= int64(len(p.buf)) {
		return 0, io.EOF
	}
	n := copy(b, p.buf[off:])
	if n < len(b) {
		return n, io.ErrUnexpectedEOF
	}
	return n, nil
}

// wantYAML: ?format=yaml asks for the YAML that recipe/rule apply read.
func wantYAML(c *gin.Context) bool { return c.Query("format") == "yaml" }

func writeYAML(c *gin.Context, marshal func() ([]byte, error)) error {
	b, err := marshal()
	if err != nil {
		return err
	}
	c.Data(http.StatusOK, "application/yaml", b)
	return nil
}

// handlePutRecipes applies a YAML file of recipes: all are checked before
// any is stored, so a bad one changes nothing.
func (s *Server) handlePutRecipes(c *gin.Context) error {
	body, err := s.readBody(c)
	if err != nil {
		return err
	}
	rs, err := recipe.ParseRecipes(bytes.NewReader(body))
	if err != nil {
		return httpErr(http.StatusBadRequest, "%v", err)
	}
	out, err := s.ApplyRecipes(c.Request.Context(), rs)
	if err != nil {
		return err
	}
	writeJSON(c.Writer, http.StatusOK, out)
	return nil
}

// ApplyRecipes stores parsed recipes (their csv/dir pools resolved) after
// checking every one against the image library: all or nothing. serve
// --recipes calls it at start; PUT /api/v1/recipes for each file.
func (s *Server) ApplyRecipes(ctx context.Context, rs []recipe.Recipe) ([]contract.RecipeApplied, error) {
	for _, r := range rs {
		for _, p := range r.Pools {
			if p.Unresolved() {
				return nil, httpErr(http.StatusBadRequest, "recipe %s, pool %s names a file (csv/dir): apply it with `cm4bench recipe apply -f`, which reads the file", r.Name, p.Name)
			}
		}
		if _, err := s.checkRecipeImage(ctx, r); err != nil {
			return nil, err
		}
	}
	out := []contract.RecipeApplied{}
	for _, r := range rs {
		got, changed, err := s.Store.PutRecipe(ctx, r)
		if err != nil {
			return nil, err
		}
		out = append(out, contract.RecipeApplied{Name: got.Name, Version: got.Version, Changed: changed})
		if changed {
			s.emit(ctx, contract.Event{Kind: contract.EventRecipeApplied, Message: fmt.Sprintf("recipe %s v%d applied", got.Name, got.Version),
				Fields: map[string]any{"recipe": got.Name, "version": got.Version}})
		}
	}
	return out, nil
}

// ApplyRules replaces the rule list; every rule must name a stored recipe.
func (s *Server) ApplyRules(ctx context.Context, rs recipe.RuleSet) error {
	for _, r := range rs.Rules {
		if _, err := s.Store.Recipe(ctx, r.Recipe, 0); errors.Is(err, store.ErrNotFound) {
			return httpErr(http.StatusUnprocessableEntity, "rule %s names recipe %s, which does not exist: apply it first", r.Name, r.Recipe)
		} else if err != nil {
			return err
		}
	}
	if err := s.Store.SetRules(ctx, rs); err != nil {
		return err
	}
	s.emit(ctx, contract.Event{Kind: contract.EventRulesSet, Message: fmt.Sprintf("%d rules set", len(rs.Rules)), Fields: map[string]any{"rules": len(rs.Rules)}})
	return nil
}

func (s *Server) handleRecipes(c *gin.Context) error {
	rs, err := s.Store.Recipes(c)
	if err != nil {
		return err
	}
	out := make([]recipe.Info, 0, len(rs))
	for _, r := range rs {
		pc, err := s.Store.PoolCounts(c, r.Name)
		if err != nil {
			return err
		}
		out = append(out, recipe.Info{Recipe: r, PoolStates: pc})
	}
	if wantYAML(c) {
		return writeYAML(c, func() ([]byte, error) { return recipe.MarshalRecipes(rs) })
	}
	writeJSON(c.Writer, http.StatusOK, out)
	return nil
}

func (s *Server) handleRecipe(c *gin.Context) error {
	v := 0
	if q := c.Query("version"); q != "" {
		n, err := strconv.Atoi(q)
		if err != nil || n < 1 {
			return httpErr(http.StatusBadRequest, "version %q: want a number from 1", q)
		}
		v = n
	}
	r, err := s.Store.Recipe(c, c.Param("name"), v)
	if errors.Is(err, store.ErrNotFound) {
		return httpErr(http.StatusNotFound, "no recipe %s", c.Param("name"))
	}
	if err != nil {
		return err
	}
	if wantYAML(c) {
		return writeYAML(c, func() ([]byte, error) { return recipe.MarshalRecipes([]recipe.Recipe{r}) })
	}
	pc, err := s.Store.PoolCounts(c, r.Name)
	if err != nil {
		return err
	}
	writeJSON(c.Writer, http.StatusOK, recipe.Info{Recipe: r, PoolStates: pc})
	return nil
}

func (s *Server) handleRecipeValues(c *gin.Context) error {
	rows, err := s.Store.PoolValues(c, c.Param("name"))
	if err != nil {
		return err
	}
	if rows == nil {
		rows = []contract.PoolRecord{}
	}
	writeJSON(c.Writer, http.StatusOK, rows)
	return nil
}

func (s *Server) handleRules(c *gin.Context) error {
	rs, err := s.Store.Rules(c)
	if err != nil {
		return err
	}
	if rs.Rules == nil {
		rs.Rules = []recipe.Rule{}
	}
	if wantYAML(c) {
		return writeYAML(c, func() ([]byte, error) { return recipe.MarshalRules(rs) })
	}
	writeJSON(c.Writer, http.StatusOK, rs)
	return nil
}

// handlePutRules replaces the rule list; every rule must name a stored
// recipe.
func (s *Server) handlePutRules(c *gin.Context) error {
	body, err := s.readBody(c)
	if err != nil {
		return err
	}
	rs, err := recipe.ParseRules(bytes.NewReader(body))
	if err != nil {
		return httpErr(http.StatusBadRequest, "%v", err)
	}
	if err := s.ApplyRules(c.Request.Context(), rs); err != nil {
		return err
	}
	if rs.Rules == nil {
		rs.Rules = []recipe.Rule{}
	}
	writeJSON(c.Writer, http.StatusOK, rs)
	return nil
}

func (s *Server) handleArmed(c *gin.Context) error {
	on, err := s.Store.Armed(c)
	if err != nil {
		return err
	}
	writeJSON(c.Writer, http.StatusOK, contract.Armed{Armed: on})
	return nil
}

// handleSetArmed switches every auto rule on or off. Arming also starts
// the boards already waiting that an auto rule matches.
func (s *Server) handleSetArmed(c *gin.Context) error {
	var req contract.Armed
	if err := s.decodeJSON(c.Request, &req); err != nil {
		return err
	}
	if err := s.Store.SetArmed(c, req.Armed); err != nil {
		return err
	}
	s.emit(c, contract.Event{Kind: contract.EventArmedSet, Message: map[bool]string{true: "bench armed: auto rules start deploys", false: "bench disarmed: auto rules wait"}[req.Armed],
		Fields: map[string]any{"armed": req.Armed}})
	if req.Armed {
		devs, err := s.Store.Devices(c)
		if err != nil {
			return err
		}
		for _, d := range devs {
			s.autoStart(context.WithoutCancel(c.Request.Context()), d.MAC)
		}
	}
	writeJSON(c.Writer, http.StatusOK, req)
	return nil
}

// refusals remembers, per board, why its auto rule could not start (a dry
// pool, a requirement), so the card can say so. Bounded by the devices.
type refusals struct {
	mu sync.Mutex
	m  map[string]string
}

func (r *refusals) set(mac, why string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[string]string{}
	}
	if why == "" {
		delete(r.m, mac)
		return
	}
	if len(r.m) < 100000 {
		r.m[mac] = why
	}
}

func (r *refusals) get(mac string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.m[mac]
}

// lineView is what the cards' rule lines need, read once per request: the
// rules, the armed switch and each recipe's latest version.
type lineView struct {
	rules    recipe.RuleSet
	armed    bool
	versions map[string]int
	refused  *refusals
}

func (s *Server) lineView(ctx context.Context) (lineView, error) {
	v := lineView{versions: map[string]int{}, refused: &s.refused}
	var err error
	if v.rules, err = s.Store.Rules(ctx); err != nil {
		return v, err
	}
	if len(v.rules.Rules) == 0 {
		return v, nil // a bench without rules: nothing to say
	}
	if v.armed, err = s.Store.Armed(ctx); err != nil {
		return v, err
	}
	rs, err := s.Store.Recipes(ctx)
	if err != nil {
		return v, err
	}
	for _, r := range rs {
		v.versions[r.Name] = r.Version
	}
	return v, nil
}

// match says which rule matches the board and why, for its card.
func (v lineView) match(d *contract.Device) {
	if len(v.rules.Rules) == 0 {
		return
	}
	r, why, ok := v.rules.First(d.MAC, d.Facts)
	if !ok {
		d.Match = &contract.Match{Why: why}
		return
	}
	m := &contract.Match{Rule: r.Name, Recipe: r.Recipe, Mode: r.Mode, Why: why, Version: v.versions[r.Recipe]}
	if r.Mode == recipe.ModeAuto && !v.armed {
		m.Why += " (auto, but the bench is not armed)"
	}
	if refused := v.refused.get(d.MAC); refused != "" {
		m.Why += "; could not start: " + refused
	}
	d.Match = m
}

// autoStart starts the deploy an auto rule picks for a board that just
// registered (or was waiting when the bench was armed): only with the
// bench armed, netboot on for the board and no job open.
func (s *Server) autoStart(ctx context.Context, mac string) {
	armed, err := s.Store.Armed(ctx)
	if err != nil || !armed {
		return
	}
	d, err := s.Store.Device(ctx, mac)
	if err != nil || !d.Netboot || (d.Action != nil && (d.Action.State == contract.StatePending || d.Action.State == contract.StateRunning)) {
		return
	}
	rs, err := s.Store.Rules(ctx)
	if err != nil {
		return
	}
	r, why, ok := rs.First(mac, d.Facts)
	if !ok || r.Mode != recipe.ModeAuto {
		return
	}
	a, err := s.startRecipe(store.WithOperator(ctx, "rule "+r.Name+" (zero-click)"), mac, r.Name, r.Recipe)
	if err != nil {
		_, msg := statusOf(err)
		s.refused.set(mac, msg)
		s.emit(ctx, contract.Event{Kind: contract.EventRuleMatched, Level: contract.LevelWarn, MAC: mac, Serial: serialOf(d),
			Message: fmt.Sprintf("rule %s matched (%s) but %s could not start: %s", r.Name, why, r.Recipe, msg),
			Fields:  map[string]any{"rule": r.Name, "recipe": r.Recipe, "mode": r.Mode, "error": msg}})
		return
	}
	s.refused.set(mac, "")
	s.emit(ctx, contract.Event{Kind: contract.EventRuleMatched, MAC: mac, Serial: serialOf(d),
		Message: fmt.Sprintf("rule %s matched (%s): %s v%d started", r.Name, why, a.Recipe, a.RecipeVersion),
		Fields:  map[string]any{"rule": r.Name, "recipe": a.Recipe, "version": a.RecipeVersion, "mode": r.Mode, "action_id": a.ID}})
}

func serialOf(d contract.Device) string {
	if d.Facts != nil {
		return d.Facts.Serial
	}
	return d.Serial
}

// startRecipe gives a board a deploy of a recipe's latest version: the
// requirements and the image are checked, then the files are rendered and
// the pool values allocated in one transaction with the new action.
func (s *Server) startRecipe(ctx context.Context, mac, rule, name string) (contract.Action, error) {
	d, err := s.Store.Device(ctx, mac)
	if err != nil {
		return contract.Action{}, err
	}
	r, err := s.Store.Recipe(ctx, name, 0)
	if errors.Is(err, store.ErrNotFound) {
		return contract.Action{}, httpErr(http.StatusNotFound, "no recipe %s", name)
	}
	if err != nil {
		return contract.Action{}, err
	}
	e, err := s.pinnedImage(ctx, r)
	if err != nil {
		return contract.Action{}, err
	}
	if err := r.CheckBoard(d.Facts, e.Size); err != nil {
		return contract.Action{}, httpErr(http.StatusUnprocessableEntity, "%s: %v", mac, err)
	}
	a, cancelled, err := s.Store.SetRecipeAction(ctx, store.RecipeAction{MAC: mac, Rule: rule, Recipe: r,
		Render: func(v recipe.Values) (*contract.Customise, error) {
			files, err := r.Render(recipe.BoardFrom(mac, d.Facts), v)
			if err != nil {
				return nil, err
			}
			return &contract.Customise{Files: files, After: r.After, Verify: r.Verify}, nil
		}})
	if errors.Is(err, store.ErrPoolDry) {
		return contract.Action{}, httpErr(http.StatusConflict, "%v", err)
	}
	if err != nil {
		return contract.Action{}, httpErr(http.StatusUnprocessableEntity, "recipe %s for %s: %v", name, mac, err)
	}
	if cancelled != nil {
		s.emit(ctx, contract.Event{Kind: contract.EventActionSet, MAC: mac, Message: cancelled.Type + " cancelled (replaced)",
			Fields: map[string]any{"action_id": cancelled.ID, "type": cancelled.Type, "state": cancelled.State}})
	}
	s.emit(ctx, contract.Event{Kind: contract.EventActionSet, MAC: mac, Message: fmt.Sprintf("deploy of recipe %s v%d requested", r.Name, r.Version),
		Fields: map[string]any{"action_id": a.ID, "type": a.Type, "image": a.Image, "recipe": r.Name, "version": r.Version, "rule": rule, "state": a.State}})
	if !d.Netboot {
		if err := s.Store.SetDeviceNetboot(ctx, mac, true); err != nil {
			return contract.Action{}, err
		}
		s.emit(ctx, contract.Event{Kind: contract.EventNetbootSet, MAC: mac, Message: "netboot switched on for the new deploy",
			Fields: map[string]any{"enabled": true}})
	}
	return a.Action, nil
}
