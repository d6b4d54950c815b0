// Command mkdeb builds the cm4bench .deb (`make deb`): see internal/debpkg.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/cm4bench/cm4bench/internal/debpkg"
)

func main() {
	var o debpkg.Options
	var compl string
	flag.StringVar(&o.Binary, "binary", "build/cm4bench", "the cm4bench executable to package")
	flag.StringVar(&o.ScriptsDir, "scripts", "scripts/deb", "the unit, defaults file and maintainer scripts")
	flag.StringVar(&o.ManDir, "man", "build/pkg/man", "man pages from `cm4bench man --dir`")
	flag.StringVar(&compl, "completions", "build/pkg/completions", "directory with cm4bench.bash, cm4bench.zsh and cm4bench.fish")
	flag.StringVar(&o.UdevRules, "udev-rules", "build/pkg/60-cm4bench.rules", "the output of `cm4bench usbboot udev-rules`")
	flag.StringVar(&o.Version, "version", "dev", "version (git describe)")
	flag.StringVar(&o.Arch, "arch", runtime.GOARCH, "package architecture")
	flag.StringVar(&o.OutDir, "o", "build", "output directory")
	flag.Parse()
	o.Completions = map[string]string{}
	for _, sh := range []string{"bash", "zsh", "fish"} {
		o.Completions[sh] = filepath.Join(compl, "cm4bench."+sh)
	}
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		var sec int64
		if _, err := fmt.Sscan(s, &sec); err == nil {
			o.MTime = time.Unix(sec, 0)
		}
	}
	p, err := debpkg.Build(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkdeb:", err)
		os.Exit(1)
	}
	fmt.Println(p)
}
