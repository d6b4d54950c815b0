package eeprom_test

import (
	"fmt"
	"os"

	"github.com/cm4bench/cm4bench/eeprom"
)

// Setting BOOT_ORDER=0xf21 in a release image, as set-boot-order does. The
// result is byte for byte upstream's rpi-eeprom-config output.
func Example() {
	data, err := os.ReadFile("../../shared/eeprom-vectors/pieeprom-2026-05-17.bin")
	if err != nil {
		fmt.Println(err)
		return
	}
	img, err := eeprom.Parse(data)
	if err != nil {
		fmt.Println(err)
		return
	}
	conf, _ := img.BootConf()
	c := eeprom.ParseConfig(conf)
	if _, err := c.Set("BOOT_ORDER", "0xf21"); err != nil {
		fmt.Println(err)
		return
	}
	if err := img.SetBootConf(c.Bytes()); err != nil {
		fmt.Println(err)
		return
	}
	slot, _ := img.BootConfSlot()
	modes, _ := eeprom.BootModes("0xf21")
	fmt.Printf("bootconf.txt at 0x%x: %d bytes, %d free\n", slot.Offset, slot.Size, slot.Free)
	fmt.Println(modes)
	fmt.Printf("%s", eeprom.Digest(img.Bytes(), 1700000000, 0))
	// Output:
	// bootconf.txt at 0x72e00: 96 bytes, 3980 free
	// [SD CARD/eMMC NETWORK RESTART]
	// 9d1282b2d9d237558bd62503fc1e6737ec555d7468d9d5fdc0b65425220aa5ae
	// ts: 1700000000
}
