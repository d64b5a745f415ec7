"""The prose of the finance sample dataset: concept explanations and instruction templates.

The texts live here, apart from the generator's math, so the generator stays small and a
reviewer can read and correct the wording as prose. Each concept starts with a `## term` heading
(the noun phrase the instruction templates insert) followed by the explanation; wrapped lines are
joined with spaces, blank lines start a new paragraph.
"""

from __future__ import annotations

_RAW = """
## the time value of money
The time value of money is the idea that a dollar today is worth more than a dollar received
later. Money on hand can be invested to earn a return, and future payments carry risk and lose
purchasing power to inflation.

It is the foundation of almost every valuation tool: compounding moves today's money forward in
time, discounting brings future cash back to today, so amounts at different dates can be compared.

## compound interest
Compound interest is interest earned on both the original principal and on interest already
credited. The balance grows as A = P × (1 + r/n)^(n × t), where P is the principal, r the annual
rate, n the number of compounding periods per year and t the number of years.

Because each period's interest itself earns interest, growth is exponential rather than linear,
which is why starting early matters so much for savings and why unpaid debt can snowball.

## present value
Present value is what a future amount is worth today, given a discount rate that reflects the
return you could earn elsewhere and the risk of the payment. For a single amount it is
PV = FV / (1 + r)^t.

A higher discount rate or a longer wait lowers the present value. Present value lets you compare
offers that pay at different times on equal terms.

## net present value (NPV)
Net present value is the sum of all of a project's cash flows, each discounted back to today at
the required rate of return: NPV = Σ CF_t / (1 + r)^t, with the initial investment entered as a
negative cash flow at t = 0.

A positive NPV means the project earns more than the required return and adds value; a negative
NPV means it destroys value. NPV is the standard decision rule in capital budgeting because it
measures value created in dollars.

## the internal rate of return (IRR)
The internal rate of return is the discount rate at which a project's net present value equals
zero. It is the annualised return the cash flows themselves imply.

A project is attractive when its IRR exceeds the cost of capital. IRR has no closed-form formula
and is found numerically; it can mislead when cash flows change sign more than once (several
IRRs) or when comparing projects of very different size, so it is best read alongside NPV.

## the compound annual growth rate (CAGR)
CAGR is the constant yearly growth rate that would take a value from its starting level to its
ending level over a period: CAGR = (ending value / beginning value)^(1 / years) - 1.

It smooths out year-to-year swings, which makes it useful for comparing the growth of revenue,
investments or markets over different horizons, but it hides volatility along the way.

## amortization
Amortization has two common meanings. For loans it is paying off debt with regular, equal
payments that cover interest first and then principal: early payments are mostly interest and
later payments mostly principal, as shown in an amortization schedule.

In accounting it is spreading the cost of an intangible asset, such as a patent or software
licence, over its useful life, the intangible counterpart of depreciation.

## the difference between APR and APY
The annual percentage rate (APR) is the stated yearly rate without the effect of compounding,
while the annual percentage yield (APY), or effective annual rate, includes compounding:
APY = (1 + APR/n)^n - 1.

A 12% APR compounded monthly is an APY of about 12.68%. Lenders tend to quote APR and savings
products APY, so compare like with like.

## yield to maturity
Yield to maturity (YTM) is the single discount rate that makes the present value of a bond's
remaining coupons and principal equal to its current price. It is the annual return an investor
earns by buying at today's price and holding to maturity, assuming every payment is made and
coupons are reinvested at the same rate.

When a bond trades below par its YTM is above its coupon rate; above par, below it.

## duration
Duration measures how sensitive a bond's price is to changes in interest rates. Macaulay
duration is the weighted average time, in years, until the bond's cash flows are received, with
weights equal to each cash flow's share of the present value.

Modified duration (Macaulay duration divided by 1 + yield per period) estimates the percentage
price change for a one-point change in yield: a duration of 7 means roughly a 7% price drop if
yields rise by 1 percentage point. Longer maturities and lower coupons mean higher duration.

## convexity
Convexity measures how a bond's duration itself changes as yields change, the curvature of the
price-yield relationship. Duration gives a straight-line estimate; convexity corrects it.

For ordinary bonds convexity is positive: prices rise more when yields fall than they drop when
yields rise by the same amount, which benefits the holder. Callable bonds and mortgage-backed
securities can show negative convexity.

## the yield curve
The yield curve plots the yields of bonds of the same credit quality, usually government bonds,
against their maturities. Normally it slopes upward because investors demand more yield to lock
money up for longer.

Its shape reflects expectations for interest rates, inflation and growth, and it is used to
price other debt and as an economic signal.

## an inverted yield curve
An inverted yield curve is one where short-term yields are higher than long-term yields. It
usually means markets expect the central bank to cut rates in the future, often because growth
is expected to slow.

In the United States an inversion between two-year or three-month and ten-year Treasury yields
has preceded most recessions, although the timing varies and it is not a guarantee.

## a credit spread
A credit spread is the extra yield a bond pays over a risk-free benchmark of similar maturity,
such as a government bond. It compensates investors for default risk and usually for lower
liquidity.

Spreads widen when investors grow worried about defaults or the economy and narrow when
confidence returns, so they are watched as a gauge of credit conditions.

## EBITDA
EBITDA stands for earnings before interest, taxes, depreciation and amortization. It starts
from operating profit and adds back non-cash depreciation and amortization, giving a rough view
of cash earnings from operations before financing and tax decisions.

It is widely used to compare companies and in ratios such as EV/EBITDA and debt/EBITDA, but it
ignores capital spending and working-capital needs, so it is not the same as cash flow.

## working capital
Working capital is current assets minus current liabilities: cash, receivables and inventory
less payables, accrued expenses and short-term debt. It measures the short-term funds a business
has to run its day-to-day operations.

Positive working capital suggests it can meet near-term obligations; growing companies often
tie up cash in working capital as receivables and inventory rise with sales.

## free cash flow
Free cash flow is the cash a business generates after paying for its operations and the capital
expenditures needed to maintain and grow its asset base, commonly cash flow from operations
minus capital expenditures.

It is the cash available to repay debt, pay dividends or buy back shares, and is often
considered harder to flatter with accounting choices than net income.

## the weighted average cost of capital (WACC)
WACC is the average rate a company pays to finance its assets, weighting the cost of each source
by its share of the capital structure: WACC = E/V × Re + D/V × Rd × (1 - tax rate), where E and D
are the market values of equity and debt and V = E + D.

Debt is counted after tax because interest is tax deductible. WACC is the usual discount rate
for valuing a company's free cash flows and the hurdle rate for average-risk projects.

## beta
Beta measures how much a stock's returns move with the overall market. A beta of 1 means it tends
to move in line with the market, above 1 more than the market, below 1 less, and a negative beta
means it tends to move the opposite way.

Beta captures systematic risk, the risk diversification cannot remove, and it is the risk input
in the capital asset pricing model.

## the Sharpe ratio
The Sharpe ratio measures return per unit of risk: (portfolio return - risk-free rate) divided by
the standard deviation of the portfolio's returns.

A higher Sharpe ratio means better risk-adjusted performance. It lets you compare strategies
with different volatility, but it treats upside and downside swings alike and assumes returns are
roughly normally distributed.

## the difference between accrual and cash accounting
Under cash accounting, revenue is recorded when cash is received and expenses when cash is paid.
Under accrual accounting, revenue is recorded when it is earned and expenses when they are
incurred, regardless of when cash moves.

Accrual accounting matches revenue with the costs of earning it and is required under GAAP and
IFRS for most companies; cash accounting is simpler and common for very small businesses. The
gap between the two is why profit and cash flow can differ sharply.

## depreciation
Depreciation spreads the cost of a tangible long-lived asset, such as a machine or building, over
the years it is expected to be used, instead of expensing it all at purchase. Straight-line
depreciation charges (cost - salvage value) / useful life each year.

It is a non-cash expense: it lowers reported profit and taxes but does not use cash in the year
it is charged.

## goodwill
Goodwill is the amount paid in an acquisition above the fair value of the identifiable net
assets acquired. It reflects things such as brand, customer relationships, workforce and
expected synergies.

Goodwill is not amortized under US GAAP or IFRS but is tested for impairment at least annually;
a write-down signals that the acquisition is worth less than was paid.

## the balance sheet
The balance sheet is a snapshot of what a company owns and owes at a point in time. It lists
assets, liabilities and shareholders' equity and always balances: assets = liabilities + equity.

Analysts use it to judge liquidity, leverage and the capital tied up in the business.

## the income statement
The income statement, or profit and loss statement, reports a company's revenue, expenses and
profit over a period such as a quarter or year. It runs from revenue through cost of goods sold,
gross profit, operating expenses, operating income, interest and taxes down to net income.

It shows whether the business is profitable, but on an accrual basis, so it should be read with
the cash flow statement.

## the cash flow statement
The cash flow statement shows how cash moved in and out of a company over a period, in three
sections: operating activities, investing activities (such as capital spending) and financing
activities (borrowing, repayments, dividends and share issues or buybacks).

It reconciles net income with the actual change in cash and reveals whether earnings are backed
by cash.

## the current ratio
The current ratio is current assets divided by current liabilities. It measures whether a
company can cover obligations due within a year with assets expected to turn into cash within a
year.

A ratio above 1 means current assets exceed current liabilities; what counts as healthy depends
on the industry, and a very high ratio can mean idle cash or slow-moving inventory.

## the quick ratio
The quick ratio, or acid-test ratio, is (cash + marketable securities + accounts receivable)
divided by current liabilities. It is a stricter liquidity test than the current ratio because it
excludes inventory and prepaid expenses, which may be hard to turn into cash quickly.

A quick ratio of 1 or more means the company could pay its short-term obligations without
selling inventory.

## the debt-to-equity ratio
The debt-to-equity ratio divides a company's debt (total debt, or sometimes total liabilities) by
shareholders' equity. It shows how much the business is financed by creditors relative to
owners.

Higher leverage can magnify returns to shareholders but raises fixed interest costs and the risk
of distress; normal levels vary widely by industry.

## return on equity (ROE)
Return on equity is net income divided by shareholders' equity, often the average of the opening
and closing equity. It measures how much profit a company generates with the money shareholders
have invested.

The DuPont analysis splits ROE into profit margin × asset turnover × financial leverage, which
shows whether a high ROE comes from efficiency or from borrowing.

## return on assets (ROA)
Return on assets is net income divided by total (often average) assets. It shows how efficiently
a company uses everything it owns to produce profit, whatever the mix of debt and equity.

Asset-heavy businesses such as utilities and banks have low ROAs; comparisons are most useful
within one industry.

## gross margin
Gross margin is gross profit (revenue minus cost of goods sold) divided by revenue, expressed as
a percentage. It shows how much of each sales dollar is left to pay operating expenses, interest,
taxes and profit after the direct cost of the products sold.

It reflects pricing power and production efficiency and differs a lot between industries:
software is high, grocery retail low.

## operating leverage
Operating leverage describes how much a company's costs are fixed rather than variable. With high
fixed costs, a small change in sales causes a larger percentage change in operating income.

It boosts profits when sales grow and hurts them when sales fall; the degree of operating
leverage is the percentage change in operating income divided by the percentage change in sales.

## financial leverage
Financial leverage is the use of borrowed money to finance assets. Because interest is a fixed
cost, debt magnifies the return on equity when assets earn more than the cost of borrowing and
magnifies losses when they earn less.

It is measured with ratios such as debt-to-equity, debt/EBITDA and assets/equity.

## diversification
Diversification is spreading investments across many assets, sectors or regions whose returns do
not move perfectly together. Losses in some holdings are then partly offset by others, which
reduces the portfolio's volatility without necessarily lowering its expected return.

It removes company-specific risk but not market-wide risk.

## the difference between systematic and unsystematic risk
Systematic risk, or market risk, affects the whole market: recessions, interest-rate changes,
inflation and similar shocks. It cannot be diversified away, and investors are rewarded for
bearing it.

Unsystematic risk is specific to one company or industry, such as a failed product or a lawsuit.
It can be largely eliminated by holding a diversified portfolio.

## the capital asset pricing model (CAPM)
CAPM gives the return investors should require from an asset given its systematic risk:
expected return = risk-free rate + beta × (expected market return - risk-free rate).

The term in brackets is the market risk premium. CAPM is commonly used to estimate the cost of
equity in WACC, although real returns fit it only loosely.

## alpha
Alpha is the return an investment earns above what its risk would predict, usually the excess
over a benchmark or over the CAPM expected return. Positive alpha suggests value added by the
manager's skill; negative alpha suggests underperformance after adjusting for risk.

Fees reduce alpha, and after costs many active funds show little or none over time.

## volatility
Volatility measures how much an asset's returns swing around their average, usually as the
annualized standard deviation of returns. Higher volatility means a wider range of likely
outcomes, up and down.

It is the standard risk measure in portfolio theory and a key input to option prices.

## value at risk (VaR)
Value at risk estimates the loss a portfolio should not exceed over a given period at a given
confidence level. A one-day 95% VaR of $1 million means that on 95% of days the loss should be
no more than $1 million.

It is used to set risk limits and capital, but it says nothing about how large losses are beyond
that threshold, which expected shortfall addresses.

## a call option
A call option gives its holder the right, but not the obligation, to buy an asset at a set strike
price on or before an expiry date. The buyer pays a premium for this right.

A call gains value as the underlying price rises above the strike; the most the buyer can lose is
the premium, while the seller takes on the obligation to deliver.

## a put option
A put option gives its holder the right, but not the obligation, to sell an asset at a set strike
price on or before expiry, in exchange for a premium.

Puts gain value as the underlying price falls below the strike, so investors use them as
insurance against declines or to bet on a fall.

## a futures contract
A futures contract is a standardized, exchange-traded agreement to buy or sell an asset at a set
price on a future date. Both parties are obligated, unlike with options.

Positions are marked to market daily with margin, which limits counterparty risk. Futures are
used to hedge prices, such as a farmer locking in a crop price, and to speculate.

## hedging
Hedging is taking a position that offsets the risk of another exposure, such as an airline buying
fuel futures or an exporter selling foreign currency forward.

A hedge reduces the impact of adverse moves in exchange for a cost or for giving up some of the
upside; the aim is to reduce uncertainty, not to make profit.

## inflation
Inflation is the general rise in prices over time, which reduces the purchasing power of money.
It is commonly measured with a consumer price index.

Moderate, stable inflation is a goal of most central banks; high inflation erodes savings and
fixed-income returns, and investors need returns above inflation to grow real wealth.

## the difference between real and nominal interest rates
A nominal interest rate is the stated rate, not adjusted for inflation. A real interest rate is
the nominal rate adjusted for inflation: (1 + nominal) / (1 + inflation) - 1, roughly the
nominal rate minus inflation.

If a deposit pays 5% while inflation is 3%, the real return is about 2%. Real rates show the true
growth of purchasing power.

## liquidity
Liquidity has two meanings. For an asset it is how quickly and cheaply it can be turned into cash
without moving its price: cash and large-cap stocks are liquid, real estate and private equity
are not.

For a company it is the ability to meet short-term obligations, measured with the current and
quick ratios and cash on hand.

## market capitalization
Market capitalization is the total market value of a company's shares: share price × shares
outstanding. It is how the stock market values the company's equity and is used to group stocks
into large-cap, mid-cap and small-cap.

It excludes debt, which is why enterprise value is used to compare whole businesses.

## the price-to-earnings (P/E) ratio
The P/E ratio is the share price divided by earnings per share. It tells how much investors pay
for each dollar of earnings.

A high P/E can reflect expected growth or overvaluation, a low one value or trouble. Trailing
P/E uses past earnings, forward P/E forecasts, and it is meaningless when earnings are negative.

## dividend yield
Dividend yield is a stock's annual dividends per share divided by its share price, expressed as
a percentage. It shows the cash income an investor gets relative to the price paid.

A very high yield can signal that the market expects a dividend cut, so it should be read with
the payout ratio and cash flow.

## earnings per share (EPS)
Earnings per share is net income available to common shareholders (net income minus preferred
dividends) divided by the weighted average number of common shares outstanding.

Diluted EPS also counts shares that options, warrants and convertibles could create. EPS feeds
the P/E ratio and is one of the most watched figures in earnings reports.

## book value
Book value is the value of a company's equity on its balance sheet: total assets minus total
liabilities. Per share, it is divided by shares outstanding.

Comparing market price with book value (the price-to-book ratio) is a common valuation check,
most meaningful for asset-heavy businesses such as banks.

## enterprise value
Enterprise value is the value of a whole business to all its capital providers: market
capitalization + total debt + preferred stock and minority interests - cash and equivalents.

Because it is independent of capital structure, it is paired with EBITDA or sales (EV/EBITDA,
EV/Sales) to compare companies that are financed differently, and it approximates a takeover
price.

## discounted cash flow (DCF) valuation
A discounted cash flow valuation estimates what a business or asset is worth today by
forecasting its future free cash flows and discounting them at a rate that reflects their risk,
typically WACC for a whole firm.

It usually combines an explicit forecast of five to ten years with a terminal value. The result
is very sensitive to the discount rate and growth assumptions, so analysts test a range.

## terminal value
Terminal value is the value of all cash flows beyond the explicit forecast period in a DCF. It
is usually computed with the Gordon growth formula, FCF × (1 + g) / (r - g), or with an exit
multiple such as EV/EBITDA.

It often makes up more than half of a DCF value, so the long-term growth rate and discount rate
behind it deserve careful scrutiny.

## dollar-cost averaging
Dollar-cost averaging is investing a fixed amount at regular intervals regardless of price, for
example $500 every month. More shares are bought when prices are low and fewer when high.

It reduces the risk of putting everything in at a bad moment and builds a disciplined habit,
although a lump sum invested at once has historically done better on average in rising markets.

## an exchange-traded fund (ETF)
An exchange-traded fund is a pooled investment that holds a basket of assets, often tracking an
index, and trades on a stock exchange like a single share throughout the day.

ETFs offer instant diversification, typically low fees and tax efficiency, and cover stocks,
bonds, commodities and specific sectors or strategies.

## an index fund
An index fund is a mutual fund or ETF that aims to match the performance of a market index, such
as the S&P 500, by holding its constituents rather than picking stocks.

Passive management keeps costs low, and over long periods most actively managed funds have
failed to beat comparable index funds after fees.

## an expense ratio
An expense ratio is the annual fee a fund charges, expressed as a percentage of assets. A 0.50%
expense ratio costs $50 a year on every $10,000 invested, deducted from the fund's returns.

Small differences compound over decades, so fees are among the most reliable predictors of a
fund's net performance.

## a capital gain
A capital gain is the profit from selling an asset for more than its cost basis; a capital loss
is the reverse. Gains are realized only when the asset is sold.

Many tax systems tax long-term gains, on assets held longer than a threshold such as one year in
the United States, at lower rates than short-term gains, and allow losses to offset gains.

## revenue recognition
Revenue recognition is the set of rules for when and how much revenue is recorded. Under IFRS 15
and ASC 606 a company recognizes revenue when it transfers control of promised goods or
services to a customer, in the amount it expects to be entitled to.

The standards follow five steps: identify the contract, identify the performance obligations,
set the transaction price, allocate it to the obligations, and recognize revenue as each is
satisfied.

## deferred revenue
Deferred revenue, or unearned revenue, is cash a company has received for goods or services it
has not yet delivered, such as an annual subscription paid upfront. It is recorded as a
liability and turned into revenue as the service is delivered.

Growing deferred revenue is often a good sign for subscription businesses because it represents
revenue already secured.

## days sales outstanding (DSO)
Days sales outstanding is the average number of days a company takes to collect payment after a
sale: accounts receivable / revenue × number of days in the period. It is related to receivables
turnover, which is revenue divided by average receivables.

A rising DSO can signal looser credit terms or customers struggling to pay, and it ties up cash.

## inventory turnover
Inventory turnover is cost of goods sold divided by average inventory. It shows how many times a
company sells and replaces its stock during a period; 365 divided by turnover gives days
inventory outstanding.

High turnover suggests efficient inventory management; low turnover can mean weak sales or
obsolete stock.

## the interest coverage ratio
The interest coverage ratio is earnings before interest and taxes (EBIT) divided by interest
expense. It shows how many times over a company's operating profit can pay its interest bill.

Lenders and rating agencies watch it closely; a ratio below about 1.5 suggests the company may
struggle to service its debt.

## the efficient market hypothesis
The efficient market hypothesis holds that asset prices reflect available information, so it is
hard to earn above-market returns consistently without taking more risk.

It comes in weak (past prices), semi-strong (all public information) and strong (all information)
forms. Evidence of anomalies and bubbles challenges it, but it explains why most active managers
struggle to beat index funds.

## opportunity cost
Opportunity cost is the value of the best alternative given up when making a choice. Money put
into one project cannot earn the return of the next best use.

In finance it underlies discount rates and hurdle rates: a project must earn at least what
investors could get elsewhere for similar risk.

## a sunk cost
A sunk cost is money already spent that cannot be recovered, whatever is decided next. Sound
decisions ignore sunk costs and compare only future cash flows.

The sunk cost fallacy is continuing a failing project because so much has already been invested.

## the payback period
The payback period is the time it takes for a project's cash inflows to recover its initial
investment. A $100,000 project returning $25,000 a year pays back in four years.

It is simple and highlights liquidity risk, but it ignores the time value of money (unless
discounted) and all cash flows after payback, so it should complement NPV rather than replace
it.

## the Rule of 72
The Rule of 72 is a shortcut for how long an investment takes to double: divide 72 by the annual
percentage return. At 8% a year money doubles in about 9 years.

It works well for rates between about 6% and 10%; it can also tell how fast inflation halves
purchasing power.

## a zero-coupon bond
A zero-coupon bond pays no periodic interest. It is sold at a discount to its face value and
repays the full face value at maturity; the difference is the investor's return.

Its price is simply the present value of one payment, and its duration equals its maturity, so
its price is very sensitive to interest rates. Treasury bills and STRIPS are examples.

## a credit rating
A credit rating is an agency's opinion of a borrower's ability to repay its debt, such as AAA to
D from S&P and Fitch or Aaa to C from Moody's. Bonds rated BBB- or Baa3 and above are investment
grade; below that they are high yield.

Lower ratings mean higher borrowing costs, and downgrades can force some investors to sell.

## a loan covenant
A loan covenant is a condition in a loan or bond agreement that the borrower must meet. Positive
covenants require actions, such as delivering financial statements; negative covenants restrict
them, such as taking on more debt; financial covenants set limits such as a maximum
debt/EBITDA.

Breaching a covenant can allow lenders to demand repayment or renegotiate terms.

## the difference between fixed and floating interest rates
A fixed interest rate stays the same for the life of a loan or bond, so payments are predictable.
A floating rate resets periodically as a benchmark such as SOFR plus a fixed spread, so payments
rise and fall with market rates.

Borrowers choose fixed rates for certainty and floating rates when they expect rates to fall;
interest rate swaps convert one into the other.

## mark-to-market accounting
Mark-to-market accounting values assets and liabilities at their current market price rather than
their historical cost. Traders and banks use it for securities held for trading, and futures
accounts are marked to market every day.

It gives a timely picture of value but makes reported results volatile, and in illiquid markets
prices can be hard to establish.

## the dividend discount model
The dividend discount model values a stock as the present value of its expected future
dividends. Its simplest form, the Gordon growth model, is price = D1 / (r - g), where D1 is next
year's dividend, r the required return and g a constant dividend growth rate below r.

It suits mature dividend-paying companies and is very sensitive to the gap between r and g.

## asset allocation
Asset allocation is how a portfolio is divided between asset classes such as stocks, bonds, cash
and real estate. It is chosen to match the investor's goals, time horizon and risk tolerance.

Studies find allocation explains most of the variation in a diversified portfolio's returns over
time; periodic rebalancing brings the mix back to its targets.

## a mutual fund's net asset value (NAV)
Net asset value is the value of a fund's assets minus its liabilities, divided by its shares
outstanding. Mutual funds are bought and sold at the NAV computed at the end of each trading day.

ETFs also publish a NAV, but their shares trade at market prices that can sit slightly above or
below it.

## the operating cash flow
Operating cash flow is the cash a business generates from its core operations during a period.
It starts from net income, adds back non-cash charges such as depreciation and subtracts
increases in working capital.

Consistently positive operating cash flow shows the business funds itself; profits without
operating cash flow deserve a closer look.

## a balloon payment
A balloon payment is a large lump sum due at the end of a loan whose regular payments do not fully
repay the principal. Payments during the term are lower than on a fully amortizing loan.

It creates refinancing risk: the borrower must be able to pay or refinance the balance when it
falls due.

## the cost of equity
The cost of equity is the return shareholders require for investing in a company, the
compensation for bearing its risk. It is usually estimated with CAPM, or with the dividend
growth model as D1 / price + g.

It is higher than the cost of debt because shareholders are paid last, and it is a key input to
WACC.
"""


def parse_concepts(raw: str) -> tuple[tuple[str, str], ...]:
    """Split the `## term` blocks into (term, explanation), rejoining wrapped lines.

    The texts are wrapped only to keep this file readable; training examples need plain
    paragraphs, so single newlines become spaces and blank lines stay paragraph breaks.
    """
    concepts: list[tuple[str, str]] = []
    for block in raw.split("\n## ")[1:]:
        term, _, body = block.partition("\n")
        paragraphs = [" ".join(p.split()) for p in body.strip().split("\n\n")]
        concepts.append((term.strip(), "\n\n".join(paragraphs)))
    return tuple(concepts)


CONCEPTS: tuple[tuple[str, str], ...] = parse_concepts(_RAW)
"""Every concept as (term, explanation), in file order; the generator relies on this order."""


Template = tuple[str, str]
"""(instruction, input): str.format patterns filled from a concept or a worked calculation."""

CONCEPT_TEMPLATES: tuple[Template, ...] = (
    ("Explain {term}.", ""),
    ("What is {term}?", ""),
    ("Explain {term} in plain language.", ""),
    ("Give a short explanation of {term}.", ""),
    ("Help me understand {term}.", ""),
    ("What should a finance analyst know about {term}?", ""),
    ("I'm new to corporate finance. Can you walk me through {term}?", ""),
    ("Explain the following finance term to someone new to finance.", "{bare}"),
    ("Define this finance concept and say why it matters.", "{bare}"),
)
"""Paraphrased requests; each concept gets several, one of which is held out for evaluation."""

CALCULATION_TEMPLATES: dict[str, tuple[Template, ...]] = {
    "compound_interest": (
        (
            "If I invest {principal} at {rate_pct} a year compounded {periods_per_year}, how much "
            "will I have after {years}?",
            "",
        ),
        (
            "What is the future value of {principal} invested for {years} at an annual rate of "
            "{rate_pct}, compounded {periods_per_year}?",
            "",
        ),
        (
            "Calculate the future value of this deposit.",
            "Principal: {principal}\nAnnual rate: {rate_pct}\nCompounding: {periods_per_year}\n"
            "Term: {years}",
        ),
        (
            "A savings account pays {rate_pct} per year, compounded {periods_per_year}. What does "
            "a {principal} deposit grow to in {years}?",
            "",
        ),
    ),
    "present_value": (
        (
            "How much do I need to invest today at {rate_pct} a year to have {future_value} in "
            "{years}?",
            "",
        ),
        (
            "What is the present value of {future_value} received in {years} if the discount rate "
            "is {rate_pct}?",
            "",
        ),
        (
            "Discount this future amount to today, compounding annually.",
            "Future value: {future_value}\nDiscount rate: {rate_pct}\nTime: {years}",
        ),
        (
            "A payment of {future_value} is due in {years}. With a required return of {rate_pct}, "
            "what is it worth now?",
            "",
        ),
    ),
    "loan_payment": (
        ("What is the monthly payment on a {principal} {loan} at {rate_pct} APR over {years}?", ""),
        (
            "I'm taking out a {loan} of {principal} for {years} at an annual rate of {rate_pct}. "
            "How much will I pay each month?",
            "",
        ),
        (
            "Calculate the monthly payment for this fully amortizing {loan}.",
            "Amount borrowed: {principal}\nInterest rate: {rate_pct} per year\nTerm: {years}",
        ),
        (
            "Compute the level monthly payment that pays off a {principal} {loan} in {years} at "
            "{rate_pct} interest.",
            "",
        ),
    ),
    "cagr": (
        (
            "Our {subject} went from {begin} to {end} over {years}. What was the compound annual "
            "growth rate?",
            "",
        ),
        ("Calculate the CAGR of {subject} that moved from {begin} to {end} in {years}.", ""),
        (
            "What is the compound annual growth rate?",
            "Beginning value: {begin}\nEnding value: {end}\nPeriod: {years}",
        ),
        (
            "An investment worth {begin} was worth {end} {years} later. What constant annual "
            "growth rate does that imply?",
            "",
        ),
    ),
    "npv": (
        ("Calculate the NPV of this project at a {rate_pct} discount rate.", "{flows_block}"),
        (
            "A project costs {cost} today and returns {flows_text}. At a discount rate of "
            "{rate_pct}, what is its net present value?",
            "",
        ),
        (
            "What is the net present value of these cash flows with a required return of "
            "{rate_pct}?",
            "{flows_block}",
        ),
        (
            "Should we accept this investment? Compute its NPV at a cost of capital of {rate_pct}.",
            "Upfront cost: {cost}\nInflows: {flows_text}",
        ),
    ),
    "irr": (
        ("Calculate the internal rate of return of this project.", "{flows_block}"),
        ("A project costs {cost} now and pays back {flows_text}. What is its IRR?", ""),
        ("What IRR do these cash flows imply?", "{flows_block}"),
        (
            "Find the discount rate at which this investment's NPV is zero.",
            "Upfront cost: {cost}\nInflows: {flows_text}",
        ),
    ),
    "bond_price": (
        (
            "What is the price of a bond with a {face} face value, a {coupon_pct} coupon paid "
            "{periods_per_year} and {years} to maturity if its yield to maturity is {ytm_pct}?",
            "",
        ),
        (
            "Price this bond.",
            "Face value: {face}\nCoupon rate: {coupon_pct}, paid {periods_per_year}\n"
            "Maturity: {years}\nYield to maturity: {ytm_pct}",
        ),
        (
            "A bond pays a {coupon_pct} coupon {periods_per_year} on {face} and matures in "
            "{years}. What should it cost if the market yield is {ytm_pct}?",
            "",
        ),
        (
            "Compute the fair value of a {face} bond with a {coupon_pct} coupon paid "
            "{periods_per_year}, {years} to maturity, discounted at a {ytm_pct} yield.",
            "",
        ),
    ),
    "bond_ytm": (
        (
            "A bond with a {face} face value and a {coupon_pct} coupon paid {periods_per_year} "
            "matures in {years} and trades at {price}. What is its yield to maturity?",
            "",
        ),
        (
            "Calculate the yield to maturity of this bond.",
            "Price: {price}\nFace value: {face}\nCoupon rate: {coupon_pct}, paid "
            "{periods_per_year}\nMaturity: {years}",
        ),
        (
            "I can buy a bond for {price}. It pays a {coupon_pct} coupon {periods_per_year} on "
            "{face} and matures in {years}. What yield do I earn if I hold it to maturity?",
            "",
        ),
        (
            "Find the YTM of a {face} par bond priced at {price} with a {coupon_pct} coupon paid "
            "{periods_per_year} and {years} left to maturity.",
            "",
        ),
    ),
    "current_ratio": (
        (
            "A company has current assets of {current_assets} and current liabilities of "
            "{current_liabilities}. What is its current ratio?",
            "",
        ),
        (
            "Compute the current ratio from these balance sheet figures.",
            "Current assets: {current_assets}\nCurrent liabilities: {current_liabilities}",
        ),
        (
            "Given current assets of {current_assets} against current liabilities of "
            "{current_liabilities}, how liquid is the business? Calculate the current ratio.",
            "",
        ),
    ),
    "quick_ratio": (
        (
            "Calculate the quick ratio.",
            "Cash: {cash}\nMarketable securities: {marketable_securities}\nAccounts receivable: "
            "{accounts_receivable}\nInventory: {inventory}\nCurrent liabilities: "
            "{current_liabilities}",
        ),
        (
            "A firm holds {cash} in cash, {marketable_securities} in marketable securities, "
            "{accounts_receivable} of receivables and {inventory} of inventory, with "
            "{current_liabilities} of current liabilities. What is its acid-test ratio?",
            "",
        ),
        (
            "What is the quick ratio of a company with cash of {cash}, marketable securities of "
            "{marketable_securities}, receivables of {accounts_receivable}, inventory of "
            "{inventory} and current liabilities of {current_liabilities}?",
            "",
        ),
    ),
    "debt_to_equity": (
        (
            "A company has {total_debt} of total debt and {shareholders_equity} of shareholders' "
            "equity. What is its debt-to-equity ratio?",
            "",
        ),
        (
            "Compute the debt-to-equity ratio.",
            "Total debt: {total_debt}\nShareholders' equity: {shareholders_equity}",
        ),
        (
            "How leveraged is a business with {total_debt} of debt and {shareholders_equity} of "
            "equity? Give the debt-to-equity ratio.",
            "",
        ),
    ),
    "interest_coverage": (
        (
            "A company reports EBIT of {ebit} and interest expense of {interest_expense}. What is "
            "its interest coverage ratio?",
            "",
        ),
        (
            "Compute the interest coverage ratio.",
            "EBIT: {ebit}\nInterest expense: {interest_expense}",
        ),
        (
            "How many times can operating profit of {ebit} cover an interest bill of "
            "{interest_expense}?",
            "",
        ),
    ),
    "return_on_equity": (
        (
            "Net income was {net_income}. Shareholders' equity was {equity_begin} at the start of "
            "the year and {equity_end} at the end. What is the return on equity?",
            "",
        ),
        (
            "Calculate ROE using average equity.",
            "Net income: {net_income}\nEquity, beginning of year: {equity_begin}\n"
            "Equity, end of year: {equity_end}",
        ),
        (
            "What return on average equity did a company earn with net income of {net_income}, "
            "opening equity of {equity_begin} and closing equity of {equity_end}?",
            "",
        ),
    ),
    "gross_margin": (
        ("Revenue was {revenue} and cost of goods sold was {cogs}. What is the gross margin?", ""),
        (
            "Calculate the gross margin percentage.",
            "Revenue: {revenue}\nCost of goods sold: {cogs}",
        ),
        ("A retailer sold {revenue} of goods that cost it {cogs}. What was its gross margin?", ""),
    ),
    "effective_annual_rate": (
        ("What is the effective annual rate of a {apr_pct} APR compounded {periods_per_year}?", ""),
        (
            "A card charges {apr_pct} APR, compounded {periods_per_year}. What is the effective "
            "annual rate?",
            "",
        ),
        (
            "Convert this nominal rate to an effective annual yield (APY).",
            "APR: {apr_pct}\nCompounding: {periods_per_year}",
        ),
        (
            "A deposit quotes {apr_pct} a year compounded {periods_per_year}. What annual "
            "percentage yield does that work out to?",
            "",
        ),
    ),
}
"""Several phrasings per calculation kind; the fields come from each example's params."""
