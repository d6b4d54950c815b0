package store

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/cm4bench/cm4bench/api/recipe"
	"github.com/cm4bench/cm4bench/internal/contract"
)

func lineA(values ...string) recipe.Recipe {
	return recipe.Recipe{Name: "line-a", Image: "golden.img", SHA256: strings.Repeat("ab", 32),
		Pools: []recipe.Pool{
			{Name: "hostnames", Kind: recipe.PoolCounter, Format: "line-a-%04d", Start: 1},
			{Name: "serials", Kind: recipe.PoolList, Values: values, OnFailure: recipe.OnFailureRetire},
			{Name: "macs", Kind: recipe.PoolList, Values: []string{"m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "m9"}},
		},
		Files: []recipe.File{{Path: "user-data", Template: `hostname: {{ pool "hostnames" }} serial: {{ pool "serials" }} mac: {{ pool "macs" }}`}}}
}

func deployRecipe(t *testing.T, st *Store, mac string, r recipe.Recipe) (Action, error) {
	t.Helper()
	a, _, err := st.SetRecipeAction(context.Background(), RecipeAction{MAC: mac, Rule: "rule-1", Recipe: r,
		Render: func(v recipe.Values) (*contract.Customise, error) {
			files, err := r.Render(recipe.BoardFrom(mac, nil), v)
			if err != nil {
				return nil, err
			}
			return &contract.Customise{Files: files}, nil
		}})
	return a, err
}

func TestRecipeVersions(t *testing.T) {
	ctx := context.Background()
	st := openTemp(t, filepath.Join(t.TempDir(), "db"))
	r, changed, err := st.PutRecipe(ctx, lineA("s1"))
	if err != nil || r.Version != 1 || !changed {
		t.Fatalf("first put: v%d %v %v", r.Version, changed, err)
	}
	if r, changed, _ = st.PutRecipe(ctx, lineA("s1")); r.Version != 1 || changed {
		t.Errorf("the same recipe again: v%d changed=%v, want v1 unchanged", r.Version, changed)
	}
	edit := lineA("s1")
	edit.After = contract.AfterHold
	if r, _, _ = st.PutRecipe(ctx, edit); r.Version != 1 {
		t.Errorf("an edit before any board used it: v%d, want v1 in place", r.Version)
	}
	st.Register(ctx, "dc:a6:32:00:00:01", "10.0.0.2", nil)
	if _, err := deployRecipe(t, st, "dc:a6:32:00:00:01", r); err != nil {
		t.Fatal(err)
	}
	edit.After = contract.AfterPowerOff
	if r, _, _ = st.PutRecipe(ctx, edit); r.Version != 2 {
		t.Errorf("an edit after a board used v1: v%d, want v2", r.Version)
	}
	if v1, _ := st.Recipe(ctx, "line-a", 1); v1.After != contract.AfterHold {
		t.Errorf("v1 changed under the board that used it: %+v", v1)
	}
	bad := lineA("s1")
	bad.Pools[0].Kind = recipe.PoolList
	bad.Pools[0].Format = ""
	if _, _, err := st.PutRecipe(ctx, bad); !errors.Is(err, ErrConflict) {
		t.Errorf("a pool changing kind: %v, want ErrConflict", err)
	}
	if all, _ := st.Recipes(ctx); len(all) != 1 || all[0].Version != 2 {
		t.Errorf("Recipes = %+v", all)
	}
}

// Values are handed out once, even to 40 boards asking at the same time;
// success uses them, failure returns or retires them as the pool says, a
// dry pool allocates nothing, and it all survives reopening the database.
func TestPoolAllocation(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "db")
	st := openTemp(t, path)
	var serials []string
	for i := range 30 {
		serials = append(serials, fmt.Sprintf("SN-%03d", i))
	}
	r, _, err := st.PutRecipe(ctx, lineA(serials...))
	if err != nil {
		t.Fatal(err)
	}
	r.Pools[2].Values = nil // "macs": refill to 100 so only serials run dry
	for i := range 100 {
		r.Pools[2].Values = append(r.Pools[2].Values, fmt.Sprintf("m%d", i))
	}
	r, _, _ = st.PutRecipe(ctx, r)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var dry int
	got := map[string]string{}
	for i := range 40 {
		mac := fmt.Sprintf("dc:a6:32:00:01:%02x", i)
		st.Register(ctx, mac, "", nil)
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, err := deployRecipe(t, st, mac, r)
			mu.Lock()
			defer mu.Unlock()
			if errors.Is(err, ErrPoolDry) {
				dry++
				return
			}
			if err != nil {
				t.Errorf("%s: %v", mac, err)
				return
			}
			for _, v := range a.Values {
				if who, ok := got[v.Pool+"="+v.Value]; ok {
					t.Errorf("%s=%s given to %s and %s", v.Pool, v.Value, who, mac)
				}
				got[v.Pool+"="+v.Value] = mac
			}
		}()
	}
	wg.Wait()
	if dry != 10 || len(got) != 90 {
		t.Fatalf("%d boards found the pool dry, %d values given; want 10 and 90", dry, len(got))
	}
	counts := func() map[string]map[string]int {
		pcs, _ := st.PoolCounts(ctx, "line-a")
		out := map[string]map[string]int{}
		for _, pc := range pcs {
			out[pc.Pool] = pc.States
		}
		return out
	}
	if c := counts(); c["serials"][ValueAllocated] != 30 || c["serials"][ValueFree] != 0 || c["hostnames"][ValueAllocated] != 30 {
		t.Fatalf("after 30 deploys: %v", c)
	}
	// Finish three ways: success uses, failure retires serials and
	// returns the rest, a cancel returns too.
	acts, _ := st.Actions(ctx, "", 100)
	var ok, failed, cancelled int
	for _, a := range acts {
		if a.State != contract.StatePending {
			continue
		}
		switch {
		case ok < 10:
			ok++
			st.Finish(ctx, a.ID, Result{OK: true})
		case failed < 10:
			failed++
			st.Finish(ctx, a.ID, Result{Error: "verify failed"})
		default:
			cancelled++
			st.CancelAction(ctx, a.MAC)
		}
	}
	st.Close()
	st = openTemp(t, path) // a server restart
	c := counts()
	if c["serials"][ValueUsed] != 10 || c["serials"][ValueRetired] != 20 || c["serials"][ValueFree] != 0 {
		t.Errorf("serials after 10 ok, 10 failed, 10 cancelled (retire on failure): %v", c["serials"])
	}
	if c["hostnames"][ValueUsed] != 10 || c["hostnames"][ValueFree] != 20 || c["macs"][ValueFree] != 90 {
		t.Errorf("hostnames/macs (return on failure): %v %v", c["hostnames"], c["macs"])
	}
	// A returned hostname is given again before a new number.
	r.Pools[1].Values = append(r.Pools[1].Values, "SN-100")
	r, _, _ = st.PutRecipe(ctx, r)
	a, err := deployRecipe(t, st, "dc:a6:32:00:02:01", r)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Values) != 3 || a.Values[1].Value != "SN-100" || a.Values[0].Value > "line-a-0030" {
		t.Errorf("after refilling: %+v", a.Values)
	}
	rows, _ := st.PoolValues(ctx, "line-a")
	if len(rows) == 0 || rows[0].MAC == "" {
		t.Errorf("history rows: %+v", rows)
	}
}
