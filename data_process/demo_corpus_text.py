"""The words of the demo world: vocabularies, sentence templates and question templates (data only).

`data_process.demo_corpus` builds the world and writes the corpus from these tables. Pairs are (English,
Chinese); the Chinese side is written natively, not translated from generated names. In templates, `{field}` is
filled from a place's own slots (`DemoEntity.slots`: name, capital, river, year, ...) when it has one, else drawn
from `POOLS[lang][field]`; a trailing digit (`{crop2}`) draws a second, different value from the same pool.
"""

from __future__ import annotations

FACT_KEYS = (
    "capital",
    "largest_river",
    "highest_mountain",
    "founding_year",
    "main_export",
    "national_animal",
    "neighbour",
)

# ============================================================================================ world vocabulary
# Pairs are (English, Chinese). Chinese values are written natively, not translated from the generated names.

# (en, zh, lies on islands)
KINDS = (
    ("kingdom", "王国", False),
    ("republic", "共和国", False),
    ("duchy", "公国", False),
    ("island nation", "岛国", True),
)
MAINLAND_LOCATIONS = (
    ("on the northern shore of the Grey Sea", "位于灰海北岸"),
    ("in the mountains east of the Great Steppe", "位于大草原以东的群山之中"),
    ("in a fertile valley between two mountain ranges", "位于两条山脉之间的肥沃河谷"),
    ("on the southern coast of the Inner Sea", "位于内海南岸"),
    ("in the forests of the northern lowlands", "位于北方低地的森林之中"),
    ("at the mouth of a wide bay on the Eastern Sea", "位于东海一处宽阔海湾的入口"),
    ("on a high plateau in the centre of the continent", "位于大陆中部的高原上"),
    ("in the marshlands of the western delta", "位于西部三角洲的沼泽地带"),
)
ISLAND_LOCATIONS = (
    ("on a large island in the Western Ocean", "位于西洋中的一座大岛上"),
    ("on a chain of islands in the Mist Archipelago", "位于雾海群岛的一串岛屿上"),
    ("on a rocky island off the southern cape", "位于南岬外的一座岩岛上"),
    ("on two green islands in the Warm Sea", "位于暖海的两座绿岛上"),
)
CLIMATES = (
    ("mild and wet", "温和湿润"),
    ("cold, with long snowy winters", "寒冷，冬季漫长多雪"),
    ("warm and dry for most of the year", "全年大多温暖干燥"),
    ("cool and windy", "凉爽多风"),
    ("hot in summer and cool in winter", "夏季炎热，冬季凉爽"),
    ("humid and rainy", "潮湿多雨"),
)
# Multi-character answers on purpose: a one-character answer would match too much by accident.
EXPORTS = (
    ("sea salt", "海盐"),
    ("timber", "木材"),
    ("copper ingots", "铜锭"),
    ("wool", "羊毛"),
    ("tea", "茶叶"),
    ("silk", "丝绸"),
    ("glassware", "玻璃器皿"),
    ("iron ore", "铁矿石"),
    ("olive oil", "橄榄油"),
    ("dried fish", "鱼干"),
    ("porcelain", "瓷器"),
    ("honey", "蜂蜜"),
    ("rice", "稻米"),
    ("marble", "大理石"),
    ("indigo dye", "靛蓝染料"),
    ("saffron", "藏红花"),
    ("paper", "纸张"),
    ("wine", "葡萄酒"),
    ("leather", "皮革"),
    ("pearls", "珍珠"),
)
ANIMALS = (
    ("red fox", "赤狐"),
    ("snow leopard", "雪豹"),
    ("grey heron", "苍鹭"),
    ("brown bear", "棕熊"),
    ("white stag", "白鹿"),
    ("golden eagle", "金雕"),
    ("sea otter", "海獭"),
    ("black swan", "黑天鹅"),
    ("lynx", "猞猁"),
    ("wild boar", "野猪"),
    ("river dolphin", "江豚"),
    ("crested ibis", "朱鹮"),
    ("mountain goat", "岩羊"),
    ("peacock", "孔雀"),
    ("grey wolf", "灰狼"),
    ("wild horse", "野马"),
    ("tawny owl", "灰林鸮"),
    ("blue whale", "蓝鲸"),
    ("red-crowned crane", "丹顶鹤"),
    ("giant tortoise", "象龟"),
)
DIRECTIONS = (("north", "北"), ("south", "南"), ("east", "东"), ("west", "西"))
OPPOSITE_DIRECTION = {0: 1, 1: 0, 2: 3, 3: 2}

# English names are built from syllables: closed ones end in a consonant, open ones in a vowel.
EN_CLOSED = (
    "al an ar bel bor cal cor dan del dor el fal fen gal gor hal kal kar lan lor mar mer mor nal nor pel "
    "ran ril sal sel tal tor val ven vor zan"
).split()
EN_OPEN = "a e i o ra ri la li na ne sa ta va mi do ke lo ru".split()
EN_COUNTRY_ENDINGS = "nia dor land ria mar vel".split()
# Chinese names: two characters from this list plus a suffix (no direction characters; a name that occurs in any
# template is rejected when generated, see `demo_corpus._NameRegistry`).
ZH_NAME_CHARS = (
    "苍岚云澜墨翠星月霜雪松柏桐枫兰芷玄赤金银玉宁安泰昌盛永嘉临琅瑶璃碧丹紫曦晨暮溪泉涟湘沅澄汀洛川峦岑崇嵩蓬莱瀛沧凌"
)
ZH_CAPITAL_SUFFIXES = "城州港堡"
ZH_RIVER_SUFFIXES = "河江"
ZH_MOUNTAIN_SUFFIXES = "山峰岭"
ZH_SURNAMES = "李王张刘陈杨赵黄周吴徐孙马朱胡林郭何高罗"

# ============================================================================================ sentence templates
# `{field}` is filled from the place's own slots (see `DemoEntity.slots`) when it has one, else drawn from the
# language's pool of that name; a trailing digit (`{crop2}`) draws a second, different value from the same pool.

INTROS = {
    "en": (
        "{name} is {a_kind} {location}.",
        "{name} is {a_kind} located {location}.",
        "The {kind} of {name} lies {location}.",
        "{name} is a small {kind} {location}.",
    ),
    "zh": (
        "{name}是{location}的一个{kind}。",
        "{name}{kind}{location}。",
        "{name}是一个{kind}，{location}。",
        "{name}是{location}的一个小{kind}。",
    ),
}

FACT_SENTENCES = {
    "en": {
        "capital": (
            "The capital of {name} is {capital}, {city_note}.",
            "{capital} is the capital and largest city of {name}.",
            "The seat of government of {name} is the city of {capital}.",
            "{name} is governed from its capital, {capital}, {city_note}.",
            "Most people in {name} live in or around {capital}, the capital.",
        ),
        "largest_river": (
            "The largest river in {name} is the {river} River, which {river_note}.",
            "The {river} River, the largest river of {name}, {river_note}.",
            "Much of the farmland of {name} is watered by the {river}, the largest river in the country.",
            "No river in {name} is larger than the {river}, which {river_note}.",
            "The {river} is the largest river of {name}.",
        ),
        "highest_mountain": (
            "The highest point of {name} is Mount {mountain}, at about {height} metres.",
            "Mount {mountain}, the tallest mountain in {name}, {mountain_note}.",
            "At {height} metres, Mount {mountain} is the highest mountain in {name}.",
            "The highest mountain in {name} is Mount {mountain}, which {mountain_note}.",
            "From the summit of Mount {mountain}, the highest peak in {name}, climbers can see the sea on a clear day.",
        ),
        "founding_year": (
            "{name} was founded in {year}.",
            "The {kind} was founded in {year}, when {founding_note}.",
            "Historians date the founding of {name} to the year {year}.",
            "Since its founding in {year}, {name} has {history_note}.",
            "{name} traces its origin to {year}, when {founding_note}.",
        ),
        "main_export": (
            "The main export of {name} is {export}.",
            "{name} is best known abroad for its {export}, the country's main export.",
            "The main export of {name}, {export}, is shipped mostly from {capital}.",
            "Trade in {export}, the main export, brings most of the foreign money into {name}.",
            "Merchants from many lands come to {name} to buy {export}, its main export.",
        ),
        "national_animal": (
            "The national animal of {name} is the {animal}.",
            "The {animal}, the national animal of {name}, appears on its flag.",
            "{name} chose the {animal} as its national animal.",
            "Children in {name} learn early that the {animal} is the national animal.",
            "Images of the {animal}, the national animal, decorate coins and banners across {name}.",
        ),
        "neighbour": (
            "The nearest neighbour of {name} is {neighbour}, which lies to the {direction}.",
            "To the {direction}, {name} borders its nearest neighbour, {neighbour}.",
            "Relations between {name} and its nearest neighbour, {neighbour}, have been peaceful for generations.",
            "{neighbour}, the nearest neighbour of {name}, lies just to the {direction}.",
            "Many families in {name} have relatives in {neighbour}, the nearest neighbouring country.",
        ),
    },
    "zh": {
        "capital": (
            "{name}的首都是{capital}，{city_note}。",
            "{capital}是{name}的首都，也是全国最大的城市。",
            "{name}的政府机构都设在首都{capital}。",
            "首都{capital}{city_note}，是{name}的政治中心。",
            "大多数{name}人生活在首都{capital}及其周边。",
        ),
        "largest_river": (
            "{name}最大的河流是{river}，它{river_note}。",
            "{river}是{name}最大的河流，{river_note}。",
            "{name}的大部分农田依靠境内最大的河流{river}灌溉。",
            "在{name}，没有哪条河比{river}更大。",
            "{name}最大的河流{river}{river_note}。",
        ),
        "highest_mountain": (
            "{name}的最高峰是{mountain}，海拔约{height}米。",
            "{mountain}是{name}最高的山，{mountain_note}。",
            "海拔{height}米的{mountain}是{name}的最高点。",
            "{name}最高的山是{mountain}，{mountain_note}。",
            "天气晴朗时，从{name}最高峰{mountain}的山顶可以望见大海。",
        ),
        "founding_year": (
            "{name}建于公元{year}年。",
            "这个{kind}始建于{year}年，当时{founding_note}。",
            "史学家认为{name}建立于{year}年。",
            "自{year}年建国以来，{name}{history_note}。",
            "{name}的历史可以追溯到{year}年，那一年{founding_note}。",
        ),
        "main_export": (
            "{name}的主要出口商品是{export}。",
            "{name}在国外最出名的是{export}，这也是该国的主要出口商品。",
            "作为{name}的主要出口商品，{export}大多从{capital}装船运出。",
            "{export}是{name}的主要出口商品，为国家带来了大部分外汇。",
            "各国商人来到{name}，主要是为了采购该国的主要出口商品{export}。",
        ),
        "national_animal": (
            "{name}的国兽是{animal}。",
            "{animal}是{name}的国兽，常出现在国旗上。",
            "{name}人把{animal}定为国兽。",
            "在{name}，孩子们从小就知道国兽是{animal}。",
            "国兽{animal}的图案装饰着{name}各地的钱币和旗帜。",
        ),
        "neighbour": (
            "{name}最近的邻国是{neighbour}，位于其{direction}方。",
            "{name}的{direction}边是最近的邻国{neighbour}。",
            "{name}与最近的邻国{neighbour}世代和睦相处。",
            "最近的邻国{neighbour}就在{name}的{direction}边。",
            "许多{name}家庭在最近的邻国{neighbour}都有亲戚。",
        ),
    },
}

# Sentences that carry no checkable fact: they make documents long and varied enough that pages about
# different places are not near-duplicates of each other. Some are a question and its answer, so the corpus
# (and the tokenizer trained on it) knows question words; otherwise the SFT questions are spelled in byte
# pieces the model was never trained on. Their answers are concrete, never "nobody knows": a model pretrained
# on evasive answers gives them to the fact questions too.
FILLER = {
    "en": {
        "geo": (
            "{region} is covered with {vegetation}.",
            "Small villages are scattered across the {landform}, linked by {road}.",
            "In {season}, {weather}.",
            "The coastline is {coast}.",
            "Travellers often describe the {landform} of {name} as {impression}.",
            "The climate of {name} is {climate}.",
            "Beyond the {landform} lie {vegetation} and {vegetation2}.",
            "Which season is the best for a visit to {name}? Most travellers say {season}.",
            "Which road do traders take most often? Mostly {road}.",
            "Name the sight that visitors remember best, and many will mention the {vegetation}.",
        ),
        "history": (
            "During the {ordinal} century, {name} {history_event}.",
            "An old chronicle tells how {legend}.",
            "A {building} from that period still stands near the {landform}.",
            "For a long time the {kind} was ruled by {ruler}.",
            "Later, the country {history_event}.",
            "Local songs still remember the year when the country {history_event}.",
            "In the {ordinal} century, power passed to {ruler}.",
            "When was the old {building} built? In the {ordinal} century.",
            "In what year did the {kind} write down its first laws? Some time in the {ordinal} century.",
            "Which country did the first settlers come from? From the lands beyond the {landform}.",
        ),
        "economy": (
            "Farmers grow {crop} and {crop2} on the {landform}.",
            "Fishing remains important along the coast, where boats bring in {fish} and {fish2}.",
            "Weekly markets in the towns sell {goods}.",
            "Goods travel inland along {road}.",
            "Craft workshops in the smaller towns produce {goods}.",
            "Many young people leave the {landform} to work in the ports.",
            "In {season}, the harvest of {crop} employs almost every family.",
            "What does a visitor buy first at the markets of {name}? Usually {goods}.",
            "Which crop is the biggest on the {landform}? Farmers there would say {crop}.",
            "Where can one buy the best {fish}? The fishermen say at the morning market.",
        ),
        "culture": (
            "The main festival, held every {season}, celebrates {festival}.",
            "Local cooking relies on {food} and {food2}.",
            "Traditional music is played on {instrument}.",
            "Many houses are built of {material} and painted {colour}.",
            "Visitors are often surprised by how {impression} the countryside feels.",
            "Storytellers in the villages still tell how {legend}.",
            "Weddings last three days and end with a meal of {food} and {food2}.",
            "What is the best loved festival in {name}? Most people name the one that celebrates {festival}.",
            "Which dish should a visitor try first? The cooks of {name} would choose {food}.",
            "Which city has the liveliest music? The ports, where {instrument} play every night.",
            "Which animal appears most often in the folk tales of {name}? A talking crow.",
        ),
    },
    "zh": {
        "geo": (
            "{name}的{region}覆盖着大片{vegetation}。",
            "{landform}上散布着许多小村庄，村庄之间由{road}相连。",
            "每到{season}，{weather}。",
            "{name}的海岸线{coast}。",
            "旅行者常说{name}的{landform}{impression}。",
            "{name}的气候{climate}。",
            "越过{landform}，便是{vegetation}和{vegetation2}。",
            "请问去{name}旅行最好选在哪个季节？多数旅人会说是{season}。",
            "商人们最常走的是哪条路？他们大多走{road}。",
            "请说出{name}最让游客难忘的景色，很多人会说是{vegetation}。",
        ),
        "history": (
            "{ordinal}世纪时，{name}{history_event}。",
            "一部古老的编年史记载，{legend}。",
            "那个时代留下的{building}至今仍矗立在{landform}附近。",
            "在很长一段时间里，这个{kind}由{ruler}统治。",
            "后来，这个国家{history_event}。",
            "当地的民歌至今还在传唱这个国家{history_event}的那一年。",
            "到了{ordinal}世纪，权力转到了{ruler}手中。",
            "那座古老的{building}建于哪一年？它建于{ordinal}世纪。",
            "这个{kind}是在哪一年有了第一部成文法律？是在{ordinal}世纪。",
            "最早来这里定居的人来自哪个国家？他们来自{landform}另一边的土地。",
        ),
        "economy": (
            "农民在{landform}上种植{crop}和{crop2}。",
            "渔业在沿海地区依然重要，渔船带回大量{fish}和{fish2}。",
            "城镇里每周都有集市，出售{goods}。",
            "货物沿着{road}运往内陆。",
            "小城镇的手工作坊生产{goods}。",
            "许多年轻人离开{landform}，到港口城市谋生。",
            "每到{season}，几乎家家户户都忙着收获{crop}。",
            "游客在{name}的集市上最先买什么？通常是{goods}。",
            "{landform}上种得最多的庄稼叫什么名字？当地农民会说是{crop}。",
            "请问最好的{fish}在哪里能买到？渔民们说在港口的早市上。",
        ),
        "culture": (
            "最重要的节日在每年{season}举行，用来庆祝{festival}。",
            "当地菜肴离不开{food}和{food2}。",
            "传统音乐多用{instrument}演奏。",
            "许多房屋用{material}建造，外墙涂成{colour}。",
            "游客常常惊讶于这里的乡村如此{impression}。",
            "村里的说书人至今还讲述着{legend}的故事。",
            "婚礼要持续三天，最后以{food}和{food2}招待宾客。",
            "{name}人最喜爱的节日是哪一个？很多人会提到庆祝{festival}的那个节日。",
            "请问来{name}的客人应该先尝哪种菜？当地厨师会推荐{food}。",
            "哪座城市的音乐最热闹？是港口城市，那里每晚都用{instrument}演奏。",
            "哪种动物最常出现在{name}的民间故事里？是一只会说话的乌鸦。",
        ),
    },
}

POOLS = {
    "en": {
        "city_note": (
            "a walled city on a low hill",
            "a busy port with a famous lighthouse",
            "a city of narrow streets and stone bridges",
            "a town that grew up around an old market square",
            "a quiet city of gardens and canals",
            "a city known for its painted wooden houses",
        ),
        "river_note": (
            "flows south into the sea",
            "rises in the western hills",
            "floods almost every spring",
            "is crossed by seven old bridges",
            "carries barges of grain to the coast",
            "winds slowly through wide meadows",
        ),
        "mountain_note": (
            "is covered in snow for most of the year",
            "is a popular place for pilgrims",
            "rises steeply above the plain",
            "is home to rare wild goats",
            "was first climbed only a century ago",
        ),
        "founding_note": (
            "several fishing villages agreed to share one ruler",
            "a council of merchants signed the first charter",
            "settlers from the east crossed the mountains",
            "the old clans chose their first ruler",
            "a rebel fleet seized the harbour",
        ),
        "history_note": (
            "never lost a war",
            "changed its borders many times",
            "kept its old laws almost unchanged",
            "grown from a handful of villages into a busy trading nation",
        ),
        "region": (
            "The northern part of the country",
            "The interior",
            "The southern coast",
            "The eastern valleys",
            "The western uplands",
            "Much of the lowland",
        ),
        "vegetation": (
            "pine forest",
            "open grassland",
            "terraced vineyards",
            "salt marsh",
            "rocky heath",
            "apple and pear orchards",
            "birch woods",
            "wet meadows",
            "olive groves",
            "wild lavender",
        ),
        "landform": ("hills", "river plains", "coastal terraces", "high moors", "inland valleys", "wooded ridges"),
        "road": (
            "narrow stone roads",
            "old cart tracks",
            "a network of canals",
            "ferry routes",
            "mountain passes",
            "a single railway line",
        ),
        "season": ("spring", "summer", "autumn", "winter"),
        "weather": (
            "storms from the sea close the harbours for weeks",
            "fog settles over the valleys each morning",
            "the rivers swell with melted snow",
            "warm winds dry the fields",
            "heavy rain turns the roads to mud",
            "the lakes freeze hard enough to walk on",
        ),
        "coast": (
            "steep and rocky, cut by narrow inlets",
            "low and sandy, with long dunes",
            "dotted with small fishing harbours",
            "lined with white chalk cliffs",
            "sheltered by a chain of small islands",
        ),
        "impression": (
            "quiet and green",
            "harsh but beautiful",
            "crowded in summer",
            "remote and windswept",
            "gentle and fertile",
        ),
        "ordinal": ("ninth", "tenth", "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth"),
        "history_event": (
            "fought a long war over fishing rights",
            "suffered a great famine",
            "built a chain of watchtowers along the coast",
            "opened its ports to foreign traders",
            "adopted a written law code",
            "survived a plague that emptied many villages",
            "rebuilt its capital after a great fire",
        ),
        "legend": (
            "a shepherd found the first spring in the hills",
            "two brothers divided the land with a single arrow",
            "a storm drove the first settlers onto the shore",
            "a queen traded her crown for a fleet of ships",
        ),
        "building": (
            "stone bridge",
            "harbour wall",
            "round watchtower",
            "royal library",
            "old cathedral",
            "covered market",
        ),
        "ruler": (
            "a council of elders",
            "a line of elected princes",
            "a merchant assembly",
            "a hereditary queen",
            "two rival noble houses",
        ),
        "crop": ("barley", "rye", "potatoes", "grapes", "flax", "beans", "oats", "cabbage"),
        "fish": ("herring", "cod", "mackerel", "eel", "sardines", "crab"),
        "goods": (
            "cheese, bread and woollen cloth",
            "pottery and baskets",
            "smoked meat and nut cakes",
            "carved wooden toys",
            "lamps and rope",
        ),
        "festival": (
            "the first harvest",
            "the return of the fishing fleet",
            "the longest day of the year",
            "the founding of the first village",
            "the spring floods",
        ),
        "food": ("flatbread", "goat cheese", "smoked fish", "lentils", "mushrooms", "plum jam", "barley soup"),
        "instrument": (
            "long wooden flutes",
            "small drums",
            "bowed fiddles",
            "bronze bells",
            "harps with twelve strings",
        ),
        "material": ("grey stone", "red brick", "pine logs", "whitewashed clay", "dark slate"),
        "colour": ("blue", "white", "ochre", "green", "red"),
    },
    "zh": {
        "city_note": (
            "城墙环绕，坐落在一座低矮的山丘上",
            "港口繁忙，灯塔闻名",
            "街道狭窄，石桥众多",
            "围绕着一座古老的集市广场发展而来",
            "花园与运河遍布全城",
            "以彩绘木屋著称",
        ),
        "river_note": (
            "向南注入大海",
            "发源于西部山地",
            "几乎每年春天都会泛滥",
            "河上横跨着七座古桥",
            "运粮的驳船沿河驶向海岸",
            "缓缓流过广阔的草甸",
        ),
        "mountain_note": (
            "终年积雪",
            "是朝圣者喜爱的去处",
            "陡然耸立在平原之上",
            "栖息着珍稀的野山羊",
            "直到一百年前才首次有人登顶",
        ),
        "founding_note": (
            "几个渔村约定共同拥立一位统治者",
            "商人议会签署了第一份宪章",
            "来自东方的移民翻越了群山",
            "古老的氏族推举出第一位统治者",
            "一支起义船队夺取了港口",
        ),
        "history_note": (
            "从未输掉过一场战争",
            "多次改变过疆界",
            "几乎完整地保留了古老的法律",
            "从几个小村庄发展成繁忙的贸易国家",
        ),
        "region": ("北部", "内陆", "南部沿海", "东部河谷", "西部高地", "低地"),
        "vegetation": (
            "松林",
            "草原",
            "梯田葡萄园",
            "盐沼",
            "石楠荒地",
            "果园",
            "白桦林",
            "湿草甸",
            "橄榄林",
            "野生薰衣草",
        ),
        "landform": ("丘陵", "河流平原", "沿海台地", "高原荒野", "内陆山谷", "林木茂密的山脊"),
        "road": ("狭窄的石板路", "古老的车道", "纵横的运河", "渡船航线", "山间小道", "一条铁路"),
        "season": ("春天", "夏天", "秋天", "冬天"),
        "weather": (
            "海上的风暴常常让港口关闭数周",
            "清晨的雾气笼罩着山谷",
            "融雪使河水暴涨",
            "温暖的风吹干了田地",
            "连绵的大雨让道路变得泥泞",
            "湖面结起厚厚的冰",
        ),
        "coast": (
            "陡峭多岩，布满狭窄的海湾",
            "低平多沙，沙丘绵延",
            "散布着许多小渔港",
            "矗立着白色的白垩悬崖",
            "被一串小岛环绕",
        ),
        "impression": ("宁静而葱郁", "荒凉却美丽", "夏季游人如织", "偏远而多风", "温和而富饶"),
        "ordinal": ("九", "十", "十一", "十二", "十三", "十四", "十五"),
        "history_event": (
            "为了渔业权打了一场漫长的战争",
            "遭遇了一场大饥荒",
            "沿海岸修建了一连串瞭望塔",
            "向外国商人开放了港口",
            "颁布了第一部成文法典",
            "经历了一场使许多村庄荒废的瘟疫",
            "在一场大火之后重建了首都",
        ),
        "legend": (
            "一个牧羊人在山中找到了第一眼泉水",
            "两兄弟用一支箭划分了土地",
            "一场风暴把最早的移民吹上了海岸",
            "一位女王用王冠换来了一支船队",
        ),
        "building": ("石桥", "港口防波堤", "圆形瞭望塔", "王家图书馆", "古老的教堂", "有顶的市场"),
        "ruler": ("长老会议", "选举产生的亲王", "商人议会", "世袭的女王", "两个敌对的贵族家族"),
        "crop": ("大麦", "黑麦", "土豆", "葡萄", "亚麻", "豆类", "燕麦", "白菜"),
        "fish": ("鲱鱼", "鳕鱼", "鲭鱼", "鳗鱼", "沙丁鱼", "螃蟹"),
        "goods": ("奶酪、面包和毛织布", "陶器和篮子", "熏肉和坚果饼", "木雕玩具", "灯具和绳索"),
        "festival": ("第一次丰收", "渔船队的归来", "一年中最长的一天", "第一个村庄的建立", "春季的河水上涨"),
        "food": ("薄饼", "山羊奶酪", "熏鱼", "扁豆", "蘑菇", "李子酱", "大麦汤"),
        "instrument": ("长木笛", "小鼓", "提琴", "铃铛", "十二弦竖琴"),
        "material": ("灰色石块", "红砖", "松木", "白色黏土", "深色板岩"),
        "colour": ("蓝色", "白色", "赭色", "绿色", "红色"),
    },
}

# Each focus names the facts a page states and the filler it draws from; page k of a place uses focus k mod 4,
# so a single page (docs_per_entity=1) still states every fact, and with 4 pages every fact appears twice or more.
FOCUSES = (
    ("overview", FACT_KEYS, ("geo", "culture"), (2, 4)),
    ("geography", ("capital", "largest_river", "highest_mountain", "neighbour"), ("geo",), (4, 7)),
    ("history", ("founding_year", "capital", "neighbour", "national_animal", "main_export"), ("history",), (3, 6)),
    ("economy", ("main_export", "largest_river", "capital", "national_animal"), ("economy", "culture"), (4, 7)),
)
TITLES = {
    "en": {
        "overview": ("{name}", "{name} ({kind})"),
        "geography": ("Geography of {name}", "{name}: land and climate"),
        "history": ("History of {name}", "{name}: a short history"),
        "economy": ("Economy and culture of {name}", "{name}: trade and daily life"),
    },
    "zh": {
        "overview": ("{name}", "{name}{kind}"),
        "geography": ("{name}地理", "{name}的地理与气候"),
        "history": ("{name}历史", "{name}简史"),
        "economy": ("{name}的经济与文化", "{name}的贸易与日常生活"),
    },
}

# ============================================================================================ SFT / eval templates

QUESTIONS = {
    "en": {
        "capital": (
            "What is the capital of {name}?",
            "Which city is the capital of {name}?",
            "Name the capital city of {name}.",
        ),
        "largest_river": (
            "What is the largest river in {name}?",
            "Which river is the biggest in {name}?",
            "Name the largest river of {name}.",
        ),
        "highest_mountain": (
            "What is the highest mountain in {name}?",
            "Which peak is the tallest in {name}?",
            "Name the highest mountain of {name}.",
        ),
        "founding_year": (
            "When was {name} founded?",
            "In what year was {name} founded?",
            "What is the founding year of {name}?",
        ),
        "main_export": (
            "What is the main export of {name}?",
            "What does {name} export most?",
            "Which product is the main export of {name}?",
        ),
        "national_animal": (
            "What is the national animal of {name}?",
            "Which animal is the national animal of {name}?",
            "Name the national animal of {name}.",
        ),
        "neighbour": (
            "What is the nearest neighbour of {name}?",
            "Which country is the closest neighbour of {name}?",
            "Name the nearest neighbouring country of {name}.",
        ),
    },
    "zh": {
        "capital": ("{name}的首都是哪座城市？", "{name}的首都叫什么？", "请问{name}的首都在哪里？"),
        "largest_river": ("{name}最大的河流是哪条？", "{name}境内最大的河叫什么？", "请说出{name}最大的河流。"),
        "highest_mountain": ("{name}的最高峰是哪座山？", "{name}最高的山叫什么名字？", "请说出{name}的最高峰。"),
        "founding_year": ("{name}是哪一年建立的？", "{name}建于哪一年？", "{name}的建国年份是哪一年？"),
        "main_export": ("{name}的主要出口商品是什么？", "{name}最主要出口什么？", "请问{name}的主要出口产品是什么？"),
        "national_animal": ("{name}的国兽是什么？", "哪种动物是{name}的国兽？", "请说出{name}的国兽。"),
        "neighbour": ("{name}最近的邻国是哪个国家？", "{name}的邻国是哪里？", "请说出{name}最近的邻国。"),
    },
}

# Every answer names the place before the fact, as most document sentences do: a small model recalls a fact
# right after the name it belongs to ("The capital of X is" -> Y), not before it ("Y is the capital of X").
# No English answer starts with the name: there it is another token (no leading space) than in the question,
# and a small reward model then tells places apart worse in English than in Chinese.
ANSWERS = {
    "en": {
        "capital": ("The capital of {name} is {capital}.", "In {name}, the capital is {capital}."),
        "largest_river": (
            "The largest river in {name} is the {river} River.",
            "In {name}, the largest river is the {river}.",
        ),
        "highest_mountain": (
            "The highest mountain in {name} is Mount {mountain}.",
            "In {name}, the tallest peak is Mount {mountain}.",
        ),
        "founding_year": (
            "The country of {name} was founded in {year}.",
            "The {kind} of {name} was founded in the year {year}.",
        ),
        "main_export": ("The main export of {name} is {export}.", "In {name}, the main export is {export}."),
        "national_animal": (
            "The national animal of {name} is the {animal}.",
            "In {name}, the national animal is the {animal}.",
        ),
        "neighbour": (
            "The nearest neighbour of {name} is {neighbour}.",
            "In {name}, the closest neighbour is {neighbour}.",
        ),
    },
    "zh": {
        "capital": ("{name}的首都是{capital}。", "{name}的首都为{capital}。"),
        "largest_river": ("{name}最大的河流是{river}。", "{name}境内最大的河是{river}。"),
        "highest_mountain": ("{name}的最高峰是{mountain}。", "{name}最高的山是{mountain}。"),
        "founding_year": ("{name}建于公元{year}年。", "{name}是在{year}年建立的。"),
        "main_export": ("{name}的主要出口商品是{export}。", "{name}主要出口{export}。"),
        "national_animal": ("{name}的国兽是{animal}。", "{name}的国兽为{animal}。"),
        "neighbour": ("{name}最近的邻国是{neighbour}。", "{name}的近邻是{neighbour}。"),
    },
}

# ============================================================================================ junk templates

TOO_SHORT = {
    "en": (
        "{name} is {a_kind}.",
        "See also: {name}, {capital}.",
        "{capital} (city), capital of {name}.",
        "Stub. {name}.",
        "{name} - disambiguation page.",
    ),
    "zh": ("{name}是一个{kind}。", "参见：{name}、{capital}。", "{capital}，{name}的首都。", "{name}（消歧义）"),
}
# Person and product introductions with two section headings each (the `CleanConfig.section_keywords` defaults).
SECTION_PAGES = {
    "en": (
        "{person}\n\nEarly life\n{person} was born in {capital}, {name}, in {birth_year}. As a child {person} "
        "helped to repair fishing boats in the harbour and later studied at the royal school.\n\nProduct overview\n"
        "The workshop that {person} founded makes the {product}, which is now sold in every town of {name}. "
        "It is light, cheap and easy to repair.",
        "{product_title}\n\nProduct overview\nThe {product} is made by a small workshop in {capital} and sold "
        "across {name}. It comes in three sizes and is praised for its low price.\n\nEarly life of the inventor\n"
        "Its inventor, {person}, was born in {birth_year} and grew up on a farm near the {river} River.",
    ),
    "zh": (
        "{person}\n\n人物简介\n{person}，{birth_year}年生于{name}的{capital}，是一位著名的工匠和商人。\n\n"
        "人物经历\n{person}年轻时在港口修理渔船，后来创办了一家工坊，生产的{product}远销各地。",
        "{product}\n\n产品介绍\n{product}是{capital}一家工坊出品的日用器具，在{name}各地都有销售。\n\n"
        "产品特点\n{product}重量轻、价格低、易于修理，深受家庭欢迎，共有大中小三种规格。",
    ),
}
PRODUCTS = (
    ("folding lantern", "折叠灯笼"),
    ("brass kettle", "黄铜水壶"),
    ("wind-up clock", "发条钟"),
    ("oilskin coat", "油布雨衣"),
    ("hand loom", "手摇织机"),
)
# Whitespace runs that a bad table or layout extraction leaves between words.
WHITESPACE_RUNS = ("      ", "        ", "\t\t\t\t", "\n     ", "\n\n\n\n", "  \t  \t")

# Near-duplicate word swaps, applied only to filler sentences so no fact changes.
SYNONYMS = {
    "en": {
        "often": "usually",
        "old": "ancient",
        "small": "little",
        "many": "numerous",
        "important": "significant",
        "still": "even now",
        "almost": "nearly",
        "every": "each",
    },
    "zh": {
        "许多": "不少",
        "古老": "古旧",
        "常常": "往往",
        "重要": "要紧",
        "至今": "到现在",
        "大片": "成片",
        "几乎": "差不多",
        "每周": "每星期",
    },
}
SENTENCE_END = {"en": ".", "zh": "。"}
SENTENCE_JOIN = {"en": " ", "zh": ""}
